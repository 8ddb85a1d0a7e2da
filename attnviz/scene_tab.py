"""The app's Scene lab tab and its ``scene`` endpoint: make a scene, explain it at once, and see each model's
heatmap against the object's true mask.

The scene is drawn by ``attnviz.scene_lab`` from explicit options and a seed; every model of the chosen set
explains the object's class (the scene's truth) with Grad-CAM at layer4, and each heatmap gets this image's
pointing-game hit, energy in mask and mask IoU, measured as the analysis measures them. "Move the object",
"Add a distractor" and "New background" change one thing each and run again. The endpoint shares the explain
endpoint's queue and concurrency limit.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from attnviz import localisation, scene_lab, scenes
from attnviz.attention import family
from attnviz.errors import AttnvizError
from attnviz.explainer import ExplainSettings
from attnviz.render import overlay

ANY = "any"
NONE = "none"
OUTLINE = (255, 255, 255)


@dataclass
class SceneResult:
    """One drawn and explained scene: its files, the pictures and the numbers."""

    options: scene_lab.SceneOptions
    summary: dict
    images: list[tuple[str, str]]  # (PNG path, caption): the scene, then each model's heatmap with the outline
    files: list[str]  # the scene, its masks and scene.json with the numbers


def mask_outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = OUTLINE) -> np.ndarray:
    """``image`` with the boundary of ``mask`` (the pixels of the mask next to one outside it) in ``colour``."""
    inside = np.pad(mask.astype(bool), 1)
    interior = inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
    out = image.copy()
    out[mask.astype(bool) & ~interior] = colour
    return out


def options_from(class_name, second_class, design, x, y, scale, rotation, flip, background, distractors, seed,
                 variant: int = 0) -> scene_lab.SceneOptions:
    """The tab's controls (and the endpoint's parameters) as scene options; "any" leaves a choice to the seed."""
    options = scene_lab.SceneOptions(
        class_name=None if class_name in (None, "", ANY) else class_name,
        second_class=None if second_class in (None, "", NONE) else second_class,
        design=design or "openmoji", x=float(x), y=float(y), scale=float(scale), rotation=float(rotation),
        flip=bool(flip), background=None if background in (None, "", ANY) else background,
        background_variant=int(variant), distractors=int(distractors), seed=int(seed))
    options.validate()
    return options


def explain_scene(app, options: scene_lab.SceneOptions, set_name: str | None) -> SceneResult:
    """Draw the scene, explain it with every model of the set and measure each heatmap against the mask."""
    set_name = set_name or app.default_set
    explainer = app.explainer(set_name)
    if sorted(explainer.classes) != sorted(scenes.CLASSES):
        raise AttnvizError(f"model set {set_name!r} was not trained on attnviz's scenes; the scene lab needs such a "
                           f"set, e.g. {app.default_set!r} if it is the built-in one")
    scene = scene_lab.draw_scene(options)
    target = explainer.classes.index(scenes.CLASSES[scene.labels[0]])
    explanation = explainer.explain(scene.image, ExplainSettings(target=target, time_limit=None))
    preprocessing = explainer.model_set.preprocessing
    masks = [localisation.view_mask(m, preprocessing) for m in scene.masks]
    settings = localisation.localisation_settings(set_name, app.sets.folder(set_name))
    folder = Path(tempfile.mkdtemp(prefix="scene-", dir=_results_dir()))
    Image.fromarray(scene.image).save(folder / "scene.png")
    for name, mask in zip(scene_lab.mask_names(len(scene.masks)), scene.masks, strict=True):
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder / name)
    images = [(str(folder / "scene.png"), "scene")]
    models = {}
    for variant, result in explanation.results.items():
        picture = mask_outline(overlay(explanation.view, result.heatmap), masks[0])
        path = folder / f"{variant}_heatmap_and_mask.png"
        Image.fromarray(picture).save(path)
        images.append((str(path), f"{variant}: {family(variant).title}"))
        measured = localisation.scene_metrics(result.heatmap, masks[0], settings)
        models[variant] = {"title": result.title, "top": [vars(p) for p in result.top[:3]],
                           "target": vars(result.target), **{k: v for k, v in measured.to_dict().items()
                                                             if k not in ("threshold", "tolerance", "source")}}
    summary = {"set": set_name, "scene": scene_lab.scene_record(options, scene), "method": "gradcam",
               "layer": "layer4", "target": scenes.CLASSES[scene.labels[0]], "models": models,
               "threshold": settings.threshold, "tolerance_px": settings.tolerance, "measured_as": settings.source}
    (folder / "scene.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    files = [str(folder / n) for n in ("scene.png", *scene_lab.mask_names(len(scene.masks)), "scene.json")]
    return SceneResult(options, summary, images, files)


def _results_dir() -> Path:
    from attnviz.page import RESULTS_DIR

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    return RESULTS_DIR


def numbers_table(summary: dict, t) -> str:
    """The numbers per model, as a Markdown table (the chance level of energy in mask beside it)."""
    rows = ["| model | top-1 | the object's class | pointing game | energy in mask | mask IoU |",
            "|---|---|---|---|---|---|"]
    for model in summary["models"].values():
        top = model["top"][0]
        rows.append(f"| {model['title']} | {top['name']} {top['probability']:.0%} | {model['target']['name']} "
                    f"{model['target']['probability']:.0%} | {'hit' if model['pointing_hit'] else 'miss'} | "
                    f"{model['energy_in_mask']:.2f} (chance {model['area_share']:.2f}) | {model['mask_iou']:.2f} |")
    return "\n".join(rows) + f"\n\n{t('scene_measured')} {summary['measured_as']}"


class SceneTab:
    """The tab's components and handlers; ``app`` is the AttnvizApp whose sets and explainers it uses."""

    CONTROLS = ("class_name", "second_class", "design", "x", "y", "scale", "rotation", "flip", "background",
                "distractors", "seed")

    def __init__(self, app) -> None:
        self.app = app
        self.c: dict = {}

    def build(self, tr, t, model_set) -> None:
        c = self.c
        self.t = t
        gr.Markdown(tr("scene_intro"))
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                c["class_name"] = gr.Dropdown([(tr("scene_any"), ANY), *((n, n) for n in scenes.CLASSES)], value="dog",
                                              label=tr("scene_class"), elem_id="scene-class")
                c["second_class"] = gr.Dropdown([(tr("scene_none"), NONE), *((n, n) for n in scenes.CLASSES)],
                                                value=NONE, label=tr("scene_second"), elem_id="scene-second")
                c["design"] = gr.Dropdown(available_designs(), value="openmoji", label=tr("scene_design"))
                c["background"] = gr.Dropdown([(tr("scene_any"), ANY), *((k, k) for k in scenes.BACKGROUND_KINDS)],
                                              value=ANY, label=tr("scene_background"))
                with gr.Row():
                    c["x"] = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="x", elem_id="scene-x")
                    c["y"] = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="y", elem_id="scene-y")
                c["scale"] = gr.Slider(*scenes.OBJECT_SCALE, value=0.4, step=0.01, label=tr("scene_scale"))
                c["rotation"] = gr.Slider(*scene_lab.ROTATION_RANGE, value=0, step=1, label=tr("scene_rotation"))
                with gr.Row():
                    c["flip"] = gr.Checkbox(False, label=tr("scene_flip"))
                    c["distractors"] = gr.Slider(0, scene_lab.MAX_DISTRACTORS, value=2, step=1,
                                                 label=tr("scene_distractors"))
                c["seed"] = gr.Number(0, precision=0, label=tr("scene_seed"), minimum=0)
                c["run"] = gr.Button(tr("scene_run"), variant="primary", elem_id="scene-run")
                with gr.Row():
                    c["move"] = gr.Button(tr("scene_move"), elem_id="scene-move")
                    c["add"] = gr.Button(tr("scene_add"), elem_id="scene-add")
                    c["new_background"] = gr.Button(tr("scene_new_background"), elem_id="scene-new-background")
            with gr.Column(scale=5):
                c["status"] = gr.Markdown("", elem_id="scene-status")
                c["gallery"] = gr.Gallery(label=tr("scene_gallery"), columns=5, height=300, format="png",
                                          elem_id="scene-gallery")
                c["numbers"] = gr.Markdown("", elem_id="scene-numbers")
                c["files"] = gr.File(label=tr("scene_files"), file_count="multiple", interactive=False,
                                     elem_id="scene-files")
                gr.Markdown(tr("scene_how"), elem_classes=["attnviz-note"])
        with gr.Column(visible=False):  # the endpoint's outputs
            c["api_summary"] = gr.JSON(label="scene summary")
            c["api_images"] = gr.Gallery(label="scene and heatmaps", format="png")
            c["api_files"] = gr.File(label="files", file_count="multiple")
        c["variant"] = gr.State(0)  # "New background" clicks
        c["moves"] = gr.State(0)  # "Move the object" clicks
        self.wire(model_set)

    def wire(self, model_set) -> None:
        c = self.c
        controls = [c[name] for name in self.CONTROLS]
        shown = [c["status"], c["gallery"], c["numbers"], c["files"]]
        common = {"api_visibility": "private", "concurrency_id": "explain"}
        c["run"].click(self.page, inputs=[model_set, *controls, c["variant"]], outputs=shown, **common)
        c["move"].click(self.move, inputs=[model_set, *controls, c["variant"], c["moves"]],
                        outputs=[c["x"], c["y"], c["moves"], *shown], **common)
        c["add"].click(self.add, inputs=[model_set, *controls, c["variant"]], outputs=[c["distractors"], *shown],
                       **common)
        c["new_background"].click(self.new_background, inputs=[model_set, *controls, c["variant"]],
                                  outputs=[c["variant"], *shown], **common)
        gr.on([], self.api, inputs=[model_set, *controls], outputs=[c["api_summary"], c["api_images"], c["api_files"]],
              api_name="scene", concurrency_id="explain")

    # ------------------------------------------------------------------ handlers

    def _shown(self, result: SceneResult | None, error: str = "") -> list:
        if result is None:
            return [f"⚠️ {error}", None, "", None]
        return [f"{self.t('done')} {result.summary['target']}", result.images, numbers_table(result.summary, self.t),
                result.files]

    def _run(self, set_name, options) -> list:
        try:
            return self._shown(explain_scene(self.app, options, set_name))
        except AttnvizError as exc:
            return self._shown(None, str(exc))

    def page(self, set_name, *values):
        try:
            options = options_from(*values)
        except AttnvizError as exc:
            return self._shown(None, str(exc))
        return self._run(set_name, options)

    def move(self, set_name, *values):
        *controls, variant, moves = values
        try:
            options = scene_lab.moved(options_from(*controls, variant), int(moves) + 1)
        except AttnvizError as exc:
            return [gr.skip(), gr.skip(), moves, *self._shown(None, str(exc))]
        return [round(options.x, 2), round(options.y, 2), int(moves) + 1,
                *self._run(set_name, replace(options, x=round(options.x, 2), y=round(options.y, 2)))]

    def add(self, set_name, *values):
        try:
            options = scene_lab.with_distractor(options_from(*values))
        except AttnvizError as exc:
            return [gr.skip(), *self._shown(None, str(exc))]
        return [options.distractors, *self._run(set_name, options)]

    def new_background(self, set_name, *values):
        *controls, variant = values
        try:
            options = scene_lab.new_background(options_from(*controls, variant))
        except AttnvizError as exc:
            return [variant, *self._shown(None, str(exc))]
        return [options.background_variant, *self._run(set_name, options)]

    def api(self, model_set=None, class_name="dog", second_class=NONE, design="openmoji", x=0.5, y=0.5, scale=0.4,
            rotation=0.0, flip=False, background=ANY, distractors=2, seed=0):
        """Draw a scene from these options, explain it with every model of the set, and return the numbers
        (the summary), the scene and each heatmap with the mask's outline, and the files (scene, masks, JSON)."""
        try:
            options = options_from(class_name, second_class, design, x, y, scale, rotation, flip, background,
                                   distractors, seed)
            result = explain_scene(self.app, options, model_set)
        except AttnvizError as exc:
            raise gr.Error(str(exc), title="attnviz", print_exception=False) from None
        return result.summary, result.images, result.files


def available_designs() -> list[str]:
    """OpenMoji, and every other design that is installed (bash scripts/designs.sh)."""
    from attnviz import designs

    return ["openmoji", *(name for name in designs.DESIGNS if name != "openmoji" and designs.installed(name))]


__all__ = ["SceneTab", "explain_scene", "mask_outline", "options_from"]
