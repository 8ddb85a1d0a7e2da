"""The Gradio 6 app: one image, ResNet50, +SE and +CBAM side by side.

Thin over the library: ``explain`` computes, ``render`` draws, and this module
wires components to them. ``AttnvizApp`` holds the handlers, which tests call
directly without a server; ``AttnvizApp.build()`` makes the Blocks and
``launch`` serves them with a bounded queue, a 20 MB upload cap, uploads and
results deleted after a while, no analytics and nothing fetched from outside.

    app = AttnvizApp(weights_dir="weights")
    launch(app.build(), host="127.0.0.1", port=7860)

The named endpoint ``/explain`` takes the image first; every other input is
optional with the page's defaults; ``archive=True`` asks for the zip too:

    from gradio_client import Client, handle_file
    summary, images, archive = Client("http://127.0.0.1:7860/").predict(
        handle_file("examples/scene_00_cat.png"), archive=True, api_name="/explain")
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from attnviz import lab_ui, sanity_ui  # noqa: E402
from attnviz.analysis.findings import language_of  # noqa: E402
from attnviz.analysis_view import build_analysis_tab  # noqa: E402
from attnviz.attention import RECORD_KINDS, family  # noqa: E402
from attnviz.errors import AttnvizError  # noqa: E402
from attnviz.explainer import CAM_METHODS, PRECISIONS, ExplainSettings, Explanation, get_explainer  # noqa: E402
from attnviz.images import MAX_FILE_BYTES  # noqa: E402
from attnviz.methods import method_choices  # noqa: E402
from attnviz.models import RESNET50_LAYERS, TARGET_LAYERS, VARIANTS  # noqa: E402
from attnviz.render import COLORMAPS, Rendered, export_zip, render_explanation  # noqa: E402
from attnviz.scene_tab import SceneTab  # noqa: E402
from attnviz.scenes import attribution  # noqa: E402
from attnviz.settings import (  # noqa: E402
    COLORMAP,
    LAYER,
    METHOD,
    OPACITY,
    OWN_TOP1,
    TIME_LIMIT_S,
    TOP_K,
    build_settings,
)
from attnviz.texts import LANGUAGES, fill, locale  # noqa: E402
from attnviz.weights import BUILTIN_SET, Manifest, default_weights_dir  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# The page's defaults are the library's (attnviz.settings); the target dropdown's OWN_TOP1 means each model's own
# top-1.
DEFAULT_METHOD, DEFAULT_LAYER, DEFAULT_OPACITY, DEFAULT_COLORMAP = METHOD, LAYER, OPACITY, COLORMAP
DELETE_CACHE = (600, 1800)  # every 10 minutes, delete uploads and results older than 30 minutes
MAX_FILE_SIZE = f"{MAX_FILE_BYTES // 2**20}mb"
QUEUE_SIZE = 16
CONCURRENCY = 2  # requests at once; each model's lock still lets only one request use its hooks
RESULTS_DIR = Path(tempfile.gettempdir()) / "attnviz-results"
PNG_LEVEL = 1  # zlib level of the page's PNGs: about a quarter of level 6's time, files about 10-20 % larger
IMPORT_COMMANDS = (
    "python -m attnviz.weights import torchvision-resnet50 --set imagenet\n"
    "python -m attnviz.weights import timm-seresnet50 --set imagenet\n"
    "python -m attnviz.weights import pytorchcv-cbam-resnet50 --set imagenet"
)
SYSTEM_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Noto Sans", "Helvetica Neue", "Arial",
                "PingFang SC", "Microsoft YaHei", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]
CSS = """
.attnviz-credit { font-size: 0.8em; opacity: 0.75; }
.attnviz-model-title h3 { margin: 0; }
.attnviz-note { font-size: 0.9em; }
.attnviz-caption { font-weight: 600; }
.attnviz-overlay img { width: 100%; height: 100%; object-fit: contain; }
.attnviz-figure img { max-width: 100%; height: auto; object-fit: contain; }
#status { font-size: 1.05em; }
.attnviz-notice { border-left: 4px solid #d97706; background: rgba(217, 119, 6, 0.08); padding: 0.4em 0.8em; }
"""

_MINUTES = DELETE_CACHE[1] // 60

# Every text of the page is in the locale files (attnviz/locales, one per language, shared with the CLI's report);
# a few name a setting of this module, filled in here.
_SETTINGS_IN_TEXTS = {"time_limit_s": TIME_LIMIT_S, "import_commands": IMPORT_COMMANDS, "minutes": _MINUTES}
TRANSLATIONS: dict[str, dict[str, str]] = {
    lang: {key: fill(value, _SETTINGS_IN_TEXTS) for key, value in locale(lang).items()} for lang in LANGUAGES
}
TRANSLATIONS["zh"] = TRANSLATIONS["zh-CN"]  # browsers that send plain "zh"
# Keys are prefixed in the page: gradio's own translations have nested groups ("image", "file", ...) and a key
# equal to one of their names would show as "[object Object]".
KEY_PREFIX = "attnviz_"
I18N = gr.I18n(**{lang: {KEY_PREFIX + k: v for k, v in texts.items()} for lang, texts in TRANSLATIONS.items()})

def tr(key: str) -> gr.i18n.I18nData:
    """A translated text for a component's label, info or value."""
    return I18N(KEY_PREFIX + key)


def t(key: str) -> str:
    """A translated text inside a longer string (at most one per string): the page replaces the marker."""
    return str(tr(key))


def domain_notice(explanation: Explanation) -> str:
    """The notice above the result columns when a shown model finds the image far from its training scenes (one
    line per such model: its score and threshold); empty when the image is in domain or no model is calibrated."""
    if not explanation.out_of_domain:
        return ""
    lines = [f"- {family(v).title}: **{r.domain_score:.3g}** > {r.domain_threshold:.3g}"
             for v, r in explanation.results.items() if r.out_of_domain]
    return t("ood_notice") + "\n\n" + "\n".join(lines)


def error_text(exc: AttnvizError) -> str:
    """A translated one-line headline, found by the error's code, followed by the library's own message."""
    return f"{t('err_' + getattr(exc, 'code', 'generic'))} {exc}"


def _uploaded_file(payload):
    """The upload as it arrived: its path (or the bytes of a data URL), for ``load_image`` to validate."""
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        return base64.b64decode(payload.url.split(",", 1)[1])
    return payload.path


def uploaded_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` input that hands the handler the uploaded file untouched.

    ``gr.Image`` itself opens every upload with Pillow before the handler runs, so a zero-byte file, a non-image
    or a decompression bomb would fail there with a bare "Error" instead of attnviz's one-line message. The
    override is set on the instance: a subclass of a gradio component makes gradio write a .pyi stub next to
    this module.
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    image.preprocess = _uploaded_file
    return image


@dataclass
class Analysis:
    """One request's results: the data, its pictures and, once asked for, the zip of both."""

    explanation: Explanation
    rendered: Rendered
    archive: Path | None = None
    folder: Path | None = None  # this request's own folder for its files, made on first use
    request: tuple | None = None  # what the models ran on (request_key): the same again shows this result
    drawing: tuple | None = None  # (opacity, colormap, excitation block): a change redraws without the models
    excitation: dict = field(default_factory=dict)  # variant -> the live excitation figure (None: no profile)
    sanity: object | None = None  # the sanity check of this image (attnviz.sanity.ImageSanity), when asked for

    def directory(self) -> Path:
        if self.folder is None:
            _prune_results(DELETE_CACHE[1])
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix="request-", dir=RESULTS_DIR))
        return self.folder

    def image_file(self, name: str, image: np.ndarray | None) -> str | None:
        """A picture as a PNG file of this request's own, for an image output.

        Handing gradio arrays would let it write each picture to a path named by the hash of its bytes, in
        place: two requests with the same result (a class clicking the same example) would rewrite the file
        while another client downloads it, and that download breaks off. gradio copies a file output into its
        cache under a temporary name and renames it into place, which is safe.
        """
        if image is None:
            return None
        path = self.directory() / f"{name}.png"
        if not path.exists():
            Image.fromarray(image).save(path, format="PNG", compress_level=PNG_LEVEL)
        return str(path)


def _prune_results(max_age: float) -> None:
    """Delete this app's result folders older than ``max_age`` seconds (gradio serves its own copies)."""
    if not RESULTS_DIR.exists():
        return
    cutoff = time.time() - max_age
    for folder in RESULTS_DIR.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            pass


def installed_sets(weights_dir: str | Path | None = None) -> tuple[Manifest, list[str]]:
    """The manifest and its set names; a clear AttnvizError when no model set is installed."""
    manifest = Manifest(Path(weights_dir) if weights_dir else None)
    names = manifest.set_names()
    if not names:
        raise AttnvizError(
            f"no model set is installed in {manifest.weights_dir}: train the built-in set (python -m attnviz.train "
            f"--variant V for resnet50, se and cbam, then --register) or import one (python -m attnviz.weights "
            f"import torchvision-resnet50 --set imagenet), or point --weights-dir / ATTNVIZ_WEIGHTS at a weights "
            f"folder")
    return manifest, names


def request_key(image, *settings) -> tuple | None:
    """What a page request runs the models on: the image (a file by path, size and modification time, data by
    its hash) and the settings; None for an image it cannot tell apart, which then always runs."""
    if isinstance(image, (str, Path)):
        try:
            stat = os.stat(image)
        except OSError:
            return None
        picture: tuple = ("file", str(image), stat.st_size, stat.st_mtime_ns)
    elif isinstance(image, bytes):
        picture = ("bytes", hashlib.sha256(image).hexdigest())
    elif isinstance(image, np.ndarray):
        picture = ("array", image.shape, str(image.dtype), hashlib.sha256(np.ascontiguousarray(image)).hexdigest())
    else:
        return None
    return (picture, *(tuple(s) if isinstance(s, list) else s for s in settings))


def family_kinds(variant: str) -> list:
    """The record kinds a family's gates produce, in the order the kinds are declared: one figure each."""
    present = family(variant).kinds()
    return [kind for kind in RECORD_KINDS.values() if kind.key in present]


def model_choices(variants: list[str]) -> list[tuple[str, str]]:
    return [(family(v).title, v) for v in variants]


def page_layers() -> list[str]:
    """The target layers the page offers: the stages, then every block (the library takes any module too)."""
    return [*TARGET_LAYERS, *(f"{stage}.{i}" for stage, blocks in zip(TARGET_LAYERS, RESNET50_LAYERS, strict=True)
                              for i in range(blocks))]


def top_label(elem_id: str) -> gr.Label:
    return gr.Label(num_top_classes=TOP_K, show_label=False, show_heading=False, elem_id=elem_id)


def figure(elem_id: str) -> gr.Image:
    """An output for a figure; its caption goes above as Markdown (a floating label would cover its title)."""
    return gr.Image(show_label=False, format="png", interactive=False, elem_id=elem_id,
                    elem_classes=["attnviz-figure"], buttons=["download", "fullscreen"])


class AttnvizApp:
    """The app's handlers and its Blocks; the handlers work without a server."""

    def __init__(self, weights_dir: str | Path | None = None, default_set: str | None = None) -> None:
        self.weights_dir = Path(weights_dir) if weights_dir else default_weights_dir()
        self.manifest, self.set_names = installed_sets(self.weights_dir)
        if default_set is not None and default_set not in self.set_names:
            raise AttnvizError(f"model set {default_set!r} is not installed (installed: {', '.join(self.set_names)}); "
                               f"choose one of them with --set")
        preferred = default_set or self.manifest.default_set
        self.default_set = preferred if preferred in self.set_names else self.set_names[0]
        self.components: dict[str, gr.components.Component | gr.blocks.BlockContext] = {}

    # ------------------------------------------------------------------ computing (explain) and drawing (render)

    def explainer(self, set_name: str | None):
        return get_explainer(set_name or self.default_set, str(self.weights_dir))

    def preload(self) -> None:
        """Load the default set and run each model once, so that broken weights show at start-up and the first
        request's times per model are not inflated by one-time set-up in whichever model runs first."""
        explainer = self.explainer(self.default_set)
        side = self.manifest.get(self.default_set).preprocessing.crop
        explainer.explain(np.full((side, side, 3), 128, np.uint8), ExplainSettings(top_k=1))

    def classes(self, set_name: str | None) -> list[str]:
        return self.manifest.get(set_name or self.default_set).classes

    def analyse(self, image, model_set: str | None = None, models: list[str] | None = None,
                method: str = DEFAULT_METHOD, target: str | None = OWN_TOP1, layer: str = DEFAULT_LAYER,
                opacity: float = DEFAULT_OPACITY, colormap: str = DEFAULT_COLORMAP, aug_smooth: bool = False,
                eigen_smooth: bool = False, progress=None, archive: bool = False, precision: str = "fp32",
                knockout: str | None = None, knockout_value: str = "identity", sanity: bool = False) -> Analysis:
        """Explain one image with the chosen models and draw every picture; write the zip only with ``archive``
        (it costs about as much as the three models' explanations, and most requests never download it)."""
        if image is None or (isinstance(image, str) and not image):
            raise AttnvizError("no image yet: upload, drop or paste one, or click an example scene", code="no_image")
        if progress is not None:
            progress(0.0, desc=f"model set {model_set or self.default_set}")  # the first use of a set loads it
        explainer = self.explainer(model_set)
        shown = [v for v in (VARIANTS if models is None else models) if v in explainer.explainers]  # of this set
        settings = build_settings(explainer.classes, explainer.explainers, method=method, layer=layer, target=target,
                                  models=shown, aug_smooth=aug_smooth,
                                  eigen_smooth=eigen_smooth, time_limit=TIME_LIMIT_S, precision=precision,
                                  knockout=knockout, knockout_value=knockout_value)
        chosen = list(settings.variants)
        report = None if progress is None else (lambda fraction, message: progress(fraction, desc=message))
        if sanity:
            sanity_ui.check_method(method)  # one line before any model runs
        explanation = explainer.explain(image, settings, progress=report)
        checked = sanity_ui.run(explainer, image, method, chosen, report) if sanity else None
        if progress is not None:
            progress(1.0, desc="drawing")
        rendered = render_explanation(explanation, colormap=colormap, opacity=float(opacity))
        analysis = Analysis(explanation, rendered, sanity=checked)
        if archive:
            self.write_archive(analysis)
        return analysis

    @staticmethod
    def write_archive(analysis: Analysis) -> Path:
        """The zip of one analysis (written once, in a folder of its own that the cache clean-up removes)."""
        if analysis.archive is None or not analysis.archive.is_file():
            explanation = analysis.explanation
            name = f"attnviz_{explanation.set_name}_{explanation.settings.method}.zip"
            analysis.archive = export_zip(explanation, analysis.rendered, analysis.directory() / name)
        return analysis.archive

    # ------------------------------------------------------------------ handlers

    def explain_page(self, image, model_set, models, method, target, layer, opacity, colormap, aug_smooth,
                     eigen_smooth, precision="fp32", knockout="", knockout_value="identity",
                     excitation_block=lab_ui.NO_BLOCK, sanity=False, last: Analysis | None = None,
                     progress=gr.Progress()) -> dict:  # noqa: B008 - gradio injects it
        """The page's handler: every output component's new value; a user's error clears them and says why.

        ``last`` is the result on show (the page's state). The same image and model settings again show it as
        it is (clicking Explain after an upload, which already explained the image), or redraw it when only the
        opacity, the colormap or the excitation block changed; any other change runs the models again."""
        request = request_key(image, model_set, models, method, target, layer, aug_smooth, eigen_smooth, precision,
                              (knockout or "").strip(), knockout_value, bool(sanity))
        drawing = (float(opacity), colormap, excitation_block)
        try:
            if last is not None and request is not None and last.request == request:
                if last.folder is not None and not last.folder.is_dir():  # its files were cleaned up: write again
                    last.folder, last.archive = None, None
                if last.drawing == drawing:
                    return self._page_values(last, again="done_again")
                rendered = render_explanation(last.explanation, colormap=colormap, opacity=float(opacity))
                redrawn = Analysis(last.explanation, rendered, request=request, drawing=drawing, sanity=last.sanity,
                                   excitation=self._excitation(last.explanation, excitation_block))
                return self._page_values(redrawn, again="done_redrawn")
            analysis = self.analyse(image, model_set, models, method, target, layer, opacity, colormap,
                                    aug_smooth, eigen_smooth, progress, precision=precision, knockout=knockout,
                                    knockout_value=knockout_value, sanity=bool(sanity))
            analysis.excitation = self._excitation(analysis.explanation, excitation_block)
        except AttnvizError as exc:
            gr.Warning(str(exc), title="attnviz")  # toasts show text as it is: the library's English line
            return self._page_values(None, status=f"⚠️ {error_text(exc)}")
        analysis.request, analysis.drawing = request, drawing
        return self._page_values(analysis)

    def _excitation(self, explanation: Explanation, block: str) -> dict:
        profiles = lab_ui.excitation_profiles(self.weights_dir, explanation.set_name)
        return lab_ui.excitation_images(explanation, block, profiles)

    def archive_page(self, analysis: Analysis | None) -> dict:
        """The page's "prepare the download" button: the zip of the results on show, written on first ask."""
        c = self.components
        if analysis is None:
            return {c["download"]: None, c["status"]: f"⚠️ {t('zip_none')}"}
        return {c["download"]: str(self.write_archive(analysis)), c["status"]: gr.skip()}

    def explain_api(self, image, model_set, models, method, target, layer, opacity, colormap, aug_smooth,
                    eigen_smooth, precision="fp32", archive=False, knockout="", knockout_value="identity",
                    excitation_block=lab_ui.NO_BLOCK, sanity=False,
                    progress=gr.Progress()):  # noqa: B008 - gradio injects it
        """Explain an image: returns the summary (predictions, agreement, settings; with ``knockout``, each
        model's answer with those gates off), the view and every model's CAM overlay as captioned images (and
        its overlay with the gates off; with ``excitation_block``, each channel-gated model's excitation of that
        block against the set's class means; with ``sanity``, the sanity check of the image at layer4: its plot,
        and per model the similarity at each randomisation depth and the verdict under the summary's
        ``sanity``), and, when ``archive`` is true, the zip of everything (else None)."""
        try:
            analysis = self.analyse(image, model_set, models, method, target, layer, opacity, colormap,
                                    aug_smooth, eigen_smooth, progress, archive=bool(archive),
                                    precision=precision, knockout=knockout, knockout_value=knockout_value,
                                    sanity=bool(sanity))
        except AttnvizError as exc:
            raise gr.Error(str(exc), title="attnviz", print_exception=False) from None
        summary = analysis.explanation.summary()
        summary["classes"] = list(analysis.explanation.classes)
        summary["render"] = {"colormap": colormap, "opacity": float(opacity)}
        summary["sanity"] = sanity_ui.summary(analysis.sanity)
        images = [(analysis.image_file("view", analysis.rendered.view), "view")]
        images += [(analysis.image_file(f"{variant}_overlay", m.overlay), f"{variant}: {family(variant).title}")
                   for variant, m in analysis.rendered.models.items()]
        images += [(analysis.image_file(f"{variant}_knockout_overlay", m.knockout_overlay),
                    f"{variant}: {family(variant).title}, {analysis.explanation.settings.knockout} off")
                   for variant, m in analysis.rendered.models.items() if m.knockout_overlay is not None]
        if analysis.sanity is not None:
            images.append((analysis.image_file("sanity_check", sanity_ui.figure(analysis.sanity)), "sanity check"))
        excitation = self._excitation(analysis.explanation, excitation_block)
        missing = [variant for variant, image in excitation.items() if image is None]
        if missing:
            set_name = analysis.explanation.set_name
            raise gr.Error(f"no excitation profile of {excitation_block} for {', '.join(missing)} in this set: it "
                           f"comes from the set's analysis (python -m attnviz.analyze --set {set_name})",
                           title="attnviz", print_exception=False)
        images += [(analysis.image_file(f"{variant}_excitation", image),
                    f"{variant}: {family(variant).title}, excitation of {excitation_block}")
                   for variant, image in excitation.items()]
        return summary, images, str(analysis.archive) if analysis.archive else None

    def set_changed(self, set_name: str) -> dict:
        """A new model set: its classes in the target dropdown and the page, its models in the checkbox group."""
        info = self.manifest.get(set_name)
        variants = [v for v in VARIANTS if v in info.models]
        c = self.components
        return {
            c["target"]: gr.Dropdown(choices=self._target_choices(info.classes), value=OWN_TOP1),
            c["models"]: gr.CheckboxGroup(choices=model_choices(variants), value=variants),
            c["classes"]: self._classes_text(info.classes),
            c["builtin_note"]: gr.Markdown(visible=set_name == BUILTIN_SET),
            **{c[f"{v}_column"]: gr.Column(visible=v in variants) for v in VARIANTS},
        }

    # ------------------------------------------------------------------ page values

    @staticmethod
    def _target_choices(classes: list[str]) -> list[tuple[str, str]]:
        return [(t("own_top1"), OWN_TOP1)] + [(name, name) for name in classes]

    @staticmethod
    def _classes_text(classes: list[str]) -> str:
        shown = ", ".join(classes[:60]) + (f", … ({len(classes) - 60} more)" if len(classes) > 60 else "")
        return f"**{t('classes')} ({len(classes)}):** {shown}"

    def _page_values(self, analysis: Analysis | None, status: str = "", again: str = "done") -> dict:
        c = self.components
        results = analysis.explanation.results if analysis else {}
        values: dict = {}
        for variant in VARIANTS:
            result = results.get(variant)
            drawn = analysis.rendered.models.get(variant) if analysis else None
            # after an error the columns stay as they were: the chosen set's models
            values[c[f"{variant}_column"]] = gr.Column(visible=result is not None) if analysis else gr.skip()
            values[c[f"{variant}_info"]] = (
                f"{t('explains')} **{result.target.name}** ({result.target.probability:.1%}) · {result.seconds:.2f} s"
                if result else "")
            values[c[f"{variant}_overlay"]] = (
                analysis.image_file(f"{variant}_overlay", drawn.overlay) if drawn else None)
            values[c[f"{variant}_top"]] = {p.name: p.probability for p in result.top} if result else None
            for kind in family_kinds(variant):
                image = drawn.figures.get(kind.figure) if drawn else None
                values[c[f"{variant}_{kind.key}"]] = (
                    analysis.image_file(f"{variant}_{kind.figure}", image) if image is not None else None)
            values.update(lab_ui.values(c, variant, analysis, t))
        values.update(sanity_ui.values(c, analysis, t))
        difference = analysis.rendered.difference if analysis else None
        values[c["difference_column"]] = gr.Column(visible=difference is not None) if analysis else gr.skip()
        values[c["difference"]] = analysis.image_file("difference_maps", difference) if analysis else None
        values[c["agreement"]] = analysis.image_file("agreement", analysis.rendered.agreement) if analysis else None
        values[c["download"]] = None  # a new result (or an error) takes the previous zip off the page
        values[c["last"]] = analysis
        if analysis and not status:
            settings = analysis.explanation.settings
            total = sum(r.seconds for r in results.values())
            titles = ", ".join(family(v).title for v in results)
            status = f"{t(again)} {CAM_METHODS[settings.method].label} · {settings.layer} · {titles} · {total:.1f} s"
        values[c["status"]] = status
        notice = domain_notice(analysis.explanation) if analysis else ""
        values[c["domain_notice"]] = gr.Markdown(notice, visible=bool(notice))
        return values

    # ------------------------------------------------------------------ the page

    def build(self) -> gr.Blocks:
        """The Blocks of the app, with its queue set up."""

        c = self.components
        classes = self.classes(self.default_set)
        variants = [v for v in VARIANTS if v in self.manifest.get(self.default_set).models]
        examples = sorted(EXAMPLES_DIR.glob("*.png")) if EXAMPLES_DIR.is_dir() else []
        with gr.Blocks(title="attnviz", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
            gr.Markdown(tr("title"))
            with gr.Tabs(elem_id="tabs"):
                with gr.Tab(tr("tab_explain"), id="explain", elem_id="tab-explain"):
                    self._build_explain_tab(classes, variants, examples)
                with gr.Tab(tr("analysis_tab"), id="analysis", elem_id="tab-analysis"):
                    # Drawn again for the set chosen on the first tab, from its files as they are then.
                    @gr.render(inputs=c["model_set"])
                    def analysis_of(set_name: str, request: gr.Request) -> None:
                        # the findings are sentences made from the numbers: written in the browser's language
                        build_analysis_tab(self.weights_dir, set_name or self.default_set, translate=tr, keyed=True,
                                           language=language_of(request.headers.get("accept-language")))
                with gr.Tab(tr("tab_scene"), id="scene", elem_id="tab-scene"):
                    self.scene_tab = SceneTab(self)
                    self.scene_tab.build(tr, t, c["model_set"])
            gr.Markdown(tr("footer"), elem_classes=["attnviz-credit"])

            # The API endpoint: the same inputs (so the same defaults), compact JSON-friendly outputs.
            with gr.Column(visible=False):
                c["api_summary"] = gr.JSON(label="summary")
                c["api_images"] = gr.Gallery(label="view and overlays", format="png")
                c["api_archive"] = gr.File(label="zip")
                c["api_archive_flag"] = gr.Checkbox(False, label="archive")

            inputs = [c[name] for name in ("image", "model_set", "models", "method", "target", "layer", "opacity",
                                           "colormap", "aug_smooth", "eigen_smooth", "precision")]
            lab = [c["knockout"], c["knockout_value"]]
            outputs = [c[name] for name in self._page_output_names()]
            # The page's events also read the result on show: unchanged inputs show it again (see explain_page).
            page = {"fn": self.explain_page, "inputs": [*inputs, *lab, c["excitation_block"], c["sanity"], c["last"]],
                    "outputs": outputs,
                    "api_visibility": "private", "concurrency_id": "explain"}
            c["explain"].click(**page)
            c["image"].upload(**page)
            if examples:
                c["examples"].load_input_event.then(**page)
            c["zip_button"].click(self.archive_page, inputs=c["last"], outputs=[c["download"], c["status"]],
                                  api_visibility="private", concurrency_id="archive")
            gr.on([], self.explain_api, inputs=[*inputs, c["api_archive_flag"], *lab, c["excitation_block"],
                                                c["sanity"]],
                  outputs=[c["api_summary"], c["api_images"], c["api_archive"]], api_name="explain",
                  concurrency_id="explain")
            c["model_set"].change(self.set_changed, inputs=c["model_set"],
                                  outputs=[c["target"], c["models"], c["classes"], c["builtin_note"],
                                           *(c[f"{v}_column"] for v in VARIANTS)],
                                  api_visibility="private")
        demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE, api_open=False)
        return demo

    def _build_explain_tab(self, classes: list[str], variants: list[str], examples: list[Path]) -> None:
        """The main tab: the image and the controls, one column per model, the comparison and the download."""
        c = self.components
        gr.Markdown(tr("intro"))
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                c["image"] = uploaded_image(label=tr("image"), sources=["upload", "clipboard"], height=300,
                                            elem_id="image-input")
                c["explain"] = gr.Button(tr("explain"), variant="primary", elem_id="explain-button")
                if examples:
                    c["examples"] = gr.Examples([[str(p)] for p in examples], inputs=[c["image"]],
                                                label=tr("examples"), examples_per_page=len(examples))
                    gr.Markdown(attribution(), elem_classes=["attnviz-credit"])
                else:
                    gr.Markdown(tr("no_examples"))
            with gr.Column(scale=4):
                c["model_set"] = gr.Dropdown(self.set_names, value=self.default_set, label=tr("model_set"))
                c["models"] = gr.CheckboxGroup(model_choices(variants), value=variants,
                                               label=tr("models"))
                c["method"] = gr.Dropdown(
                    method_choices(),
                    value=DEFAULT_METHOD, label=tr("method"), info=tr("method_info"))
                c["target"] = gr.Dropdown(self._target_choices(classes), value=OWN_TOP1, label=tr("target"),
                                          info=tr("target_info"), allow_custom_value=True)
                c["layer"] = gr.Dropdown(page_layers(), value=DEFAULT_LAYER, label=tr("layer"),
                                         info=tr("layer_info"), elem_id="layer")
                with gr.Row():
                    c["opacity"] = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label=tr("opacity"))
                    c["colormap"] = gr.Dropdown(list(COLORMAPS), value=DEFAULT_COLORMAP, label=tr("colormap"))
                c["precision"] = gr.Radio(list(PRECISIONS), value="fp32", label=tr("precision"),
                                          info=tr("precision_info"), elem_id="precision")
                with gr.Accordion(tr("smoothing"), open=False):
                    c["aug_smooth"] = gr.Checkbox(False, label=tr("aug_smooth"))
                    c["eigen_smooth"] = gr.Checkbox(False, label=tr("eigen_smooth"))
                    gr.Markdown(tr("smoothing_note"), elem_classes=["attnviz-note"])
                lab_ui.build_controls(c, tr)
                c["classes"] = gr.Markdown(self._classes_text(classes), elem_id="classes")
                c["builtin_note"] = gr.Markdown(tr("builtin_note"), visible=self.default_set == BUILTIN_SET)
        c["status"] = gr.Markdown("", elem_id="status")
        c["domain_notice"] = gr.Markdown("", visible=False, elem_id="domain-notice", elem_classes=["attnviz-notice"])
        with gr.Row(equal_height=False):
            for variant in VARIANTS:
                with gr.Column(min_width=300, elem_id=f"column-{variant}", visible=variant in variants) as column:
                    c[f"{variant}_column"] = column
                    gr.Markdown(f"### {t('family_' + variant)}", elem_classes=["attnviz-model-title"])
                    c[f"{variant}_info"] = gr.Markdown("", elem_id=f"info-{variant}")
                    c[f"{variant}_overlay"] = gr.Image(label=tr("overlay"), show_label=False, format="png",
                                                       interactive=False, height=280,
                                                       buttons=["download", "fullscreen"],
                                                       elem_id=f"overlay-{variant}",
                                                       elem_classes=["attnviz-overlay"])
                    c[f"{variant}_top"] = gr.Label(num_top_classes=TOP_K, label=tr("top5"), show_heading=False,
                                                   elem_id=f"top-{variant}")
                    for kind in family_kinds(variant):
                        gr.Markdown(tr(f"kind_{kind.key}"), elem_classes=["attnviz-caption"])
                        c[f"{variant}_{kind.key}"] = figure(f"{kind.key}-{variant}")
                    if f"family_{variant}_note" in TRANSLATIONS["en"]:
                        gr.Markdown(tr(f"family_{variant}_note"), elem_classes=["attnviz-note"],
                                    elem_id=f"note-{variant}")
                    lab_ui.build_model_parts(c, variant, tr, figure, top_label)
        gr.Markdown(tr("comparison"))
        with gr.Column(elem_id="difference-column") as difference_column:
            c["difference_column"] = difference_column
            gr.Markdown(tr("difference"), elem_classes=["attnviz-caption"])
            c["difference"] = figure("difference")
        gr.Markdown(tr("agreement"), elem_classes=["attnviz-caption"])
        c["agreement"] = figure("agreement")
        sanity_ui.build_outputs(c, tr, figure)
        c["last"] = gr.State(None, time_to_live=DELETE_CACHE[1])  # the results on show, for the zip
        with gr.Row(equal_height=True):
            c["zip_button"] = gr.Button(tr("zip_button"), variant="secondary", elem_id="zip-button", scale=1)
            c["download"] = gr.File(label=tr("download"), interactive=False, elem_id="download", scale=3)
        with gr.Accordion(tr("how_title"), open=False):
            gr.Markdown(tr("how_body"))
            gr.Markdown(tr("lab_how"))

    def _page_output_names(self) -> list[str]:
        names = []
        for variant in VARIANTS:
            names += [f"{variant}_column", f"{variant}_info", f"{variant}_overlay", f"{variant}_top"]
            names += [f"{variant}_{kind.key}" for kind in family_kinds(variant)]
            names += lab_ui.output_names(variant)
        names += sanity_ui.output_names()
        return names + ["difference_column", "difference", "agreement", "download", "last", "status",
                        "domain_notice"]


def theme() -> gr.themes.Base:
    """The default theme on the system's own fonts, so that the page fetches no web font."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, **kwargs):
    """Serve the app: no share link, 20 MB upload cap, English and Simplified Chinese, nothing from outside."""
    return demo.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_FILE_SIZE, i18n=I18N,
                       theme=theme(), css=CSS, ssr_mode=False, pwa=False, mcp_server=False,
                       enable_monitoring=False, show_error=False, **kwargs)


__all__ = ["AttnvizApp", "Analysis", "error_text", "installed_sets", "launch", "theme", "uploaded_image"]
