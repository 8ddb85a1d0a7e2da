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

import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from attnviz import imagenet_ui, lab_ui, sanity_ui  # noqa: E402
from attnviz.analysis.findings import language_of  # noqa: E402
from attnviz.analysis_view import build_analysis_tab  # noqa: E402
from attnviz.attention import family  # noqa: E402
from attnviz.errors import AttnvizError  # noqa: E402
from attnviz.explainer import CAM_METHODS, PRECISIONS, Explanation, get_explainer  # noqa: E402
from attnviz.methods import method_choices  # noqa: E402
from attnviz.models import VARIANTS  # noqa: E402
from attnviz.page import (  # noqa: E402
    CONCURRENCY,
    CSS,
    DEFAULT_COLORMAP,
    DEFAULT_LAYER,
    DEFAULT_METHOD,
    DEFAULT_OPACITY,
    DELETE_CACHE,
    EXAMPLES_DIR,
    I18N,
    MAX_FILE_SIZE,
    QUEUE_SIZE,
    TRANSLATIONS,
    Analysis,
    api_picture,
    domain_notice,
    error_text,
    family_kinds,
    figure,
    installed_sets,
    model_choices,
    page_layers,
    page_picture,
    release_memory,
    request_key,
    t,
    theme,
    top_label,
    tr,
    uploaded_image,
)
from attnviz.render import COLORMAPS, export_zip, render_explanation  # noqa: E402
from attnviz.scene_tab import SceneTab  # noqa: E402
from attnviz.scenes import attribution  # noqa: E402
from attnviz.settings import (  # noqa: E402
    OWN_TOP1,
    TIME_LIMIT_S,
    TOP_K,
    build_settings,
)
from attnviz.warmup import startup_set, weights_folder  # noqa: E402
from attnviz.weights import BUILTIN_SET  # noqa: E402


class AttnvizApp:
    """The app's handlers and its Blocks; the handlers work without a server."""

    def __init__(self, weights_dir: str | Path | None = None, default_set: str | None = None,
                 downloads: bool = False) -> None:
        """``downloads``: offer the button that downloads the ImageNet models when no such set is installed
        (``attnviz.serve`` decides by the address it listens on: ``get_imagenet.downloads_allowed``)."""
        self.weights_dir = weights_folder(weights_dir)
        self.downloads = downloads
        self.sets, self.set_names = installed_sets(self.weights_dir)  # the shipped folder and the writable one
        if default_set is not None and default_set not in self.set_names:
            raise AttnvizError(f"model set {default_set!r} is not installed (installed: {', '.join(self.set_names)}); "
                               f"choose one of them with --set")
        self.default_set = startup_set(self.sets, default_set)  # app.py's warm-up loads the same one
        self.components: dict[str, gr.components.Component | gr.blocks.BlockContext] = {}

    # ------------------------------------------------------------------ computing (explain) and drawing (render)

    def explainer(self, set_name: str | None):
        name = set_name or self.default_set
        return get_explainer(name, str(self.sets.folder(name)))

    def classes(self, set_name: str | None) -> list[str]:
        return self.sets.get(set_name or self.default_set).classes

    def analyse(self, image, model_set: str | None = None, models: list[str] | None = None,
                method: str = DEFAULT_METHOD, target: str | None = OWN_TOP1, layer: str = DEFAULT_LAYER,
                opacity: float = DEFAULT_OPACITY, colormap: str = DEFAULT_COLORMAP, aug_smooth: bool = False,
                eigen_smooth: bool = False, progress=None, archive: bool = False, precision: str = "fp32",
                knockout: str | None = None, knockout_value: str = "identity", sanity: bool = False,
                files: Callable[[str], bool] = lambda name: False) -> Analysis:
        """Explain one image with the chosen models and draw every picture; write the zip only with ``archive``
        (it costs about as much as the three models' explanations, and most requests never download it).
        The pictures ``files`` picks by name (``Rendered.images``, without ".png") are written to files while the
        rest are drawn."""
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
        analysis = Analysis(explanation, None, sanity=checked)  # type: ignore[arg-type] - drawn next

        def drawn(name: str, picture) -> None:
            if files(name):
                analysis.write_soon(name, picture)

        analysis.rendered = render_explanation(explanation, colormap=colormap, opacity=float(opacity), drawn=drawn)
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
                                    knockout_value=knockout_value, sanity=bool(sanity), files=page_picture)
            analysis.excitation = self._excitation(analysis.explanation, excitation_block)
        except AttnvizError as exc:
            gr.Warning(str(exc), title="attnviz")  # toasts show text as it is: the library's English line
            return self._page_values(None, status=f"⚠️ {error_text(exc)}")
        analysis.request, analysis.drawing = request, drawing
        return self._page_values(analysis)

    def _excitation(self, explanation: Explanation, block: str) -> dict:
        profiles = lab_ui.excitation_profiles(self.sets.folder(explanation.set_name), explanation.set_name)
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
                                    sanity=bool(sanity), files=api_picture)
        except AttnvizError as exc:
            raise gr.Error(str(exc), title="attnviz", print_exception=False) from None
        summary = analysis.explanation.summary()
        summary["classes"] = list(analysis.explanation.classes)
        summary["render"] = {"colormap": colormap, "opacity": float(opacity)}
        summary["sanity"] = sanity_ui.summary(analysis.sanity)
        drawn = analysis.rendered.models
        analysis.write_images({"view": analysis.rendered.view,
                               **{f"{v}_overlay": m.overlay for v, m in drawn.items()},
                               **{f"{v}_knockout_overlay": m.knockout_overlay for v, m in drawn.items()}})
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
        release_memory()
        return summary, images, str(analysis.archive) if analysis.archive else None

    def set_changed(self, set_name: str) -> dict:
        """A new model set: its classes in the target dropdown and the page, its models in the checkbox group."""
        info = self.sets.get(set_name)
        variants = [v for v in VARIANTS if v in info.models]
        c = self.components
        return {
            c["target"]: gr.Dropdown(choices=self._target_choices(info.classes), value=OWN_TOP1),
            c["models"]: gr.CheckboxGroup(choices=model_choices(variants), value=variants),
            c["classes"]: self._classes_text(info.classes),
            c["builtin_note"]: gr.Markdown(visible=set_name == BUILTIN_SET),
            **{c[f"{v}_column"]: gr.Column(visible=v in variants) for v in VARIANTS},
        }

    def get_imagenet_page(self, progress=gr.Progress(track_tqdm=True)) -> dict:  # noqa: B008 - gradio injects it
        """The "Get the ImageNet models" button (``imagenet_ui.press``)."""
        return imagenet_ui.press(self, progress)

    def page_loaded(self) -> dict:
        """A page opened: the sets installed now, and whether the button is offered (``imagenet_ui``)."""
        return imagenet_ui.page_loaded(self)

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
        if analysis:  # every picture the page shows, written at once
            rendered = analysis.rendered
            analysis.write_images({"difference_maps": rendered.difference, "agreement": rendered.agreement,
                                   **{f"{v}_overlay": m.overlay for v, m in rendered.models.items()},
                                   **{f"{v}_{name}": image for v, m in rendered.models.items()
                                      for name, image in m.figures.items()}})
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
        release_memory()
        return values

    # ------------------------------------------------------------------ the page

    def build(self) -> gr.Blocks:
        """The Blocks of the app, with its queue set up."""

        c = self.components
        classes = self.classes(self.default_set)
        variants = [v for v in VARIANTS if v in self.sets.get(self.default_set).models]
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
                        set_name = set_name or self.default_set
                        build_analysis_tab(self.sets.folder(set_name), set_name, translate=tr, keyed=True,
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
            imagenet_ui.wire(self, demo)
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
                c["model_set"] = gr.Dropdown(self.set_names, value=self.default_set, label=tr("model_set"),
                                             elem_id="model-set")
                imagenet_ui.build_button(self, tr)
                c["models"] = gr.CheckboxGroup(model_choices(variants), value=variants,
                                               label=tr("models"))
                c["method"] = gr.Dropdown(
                    method_choices(),
                    value=DEFAULT_METHOD, label=tr("method"), info=tr("method_info"))
                c["target"] = gr.Dropdown(self._target_choices(classes), value=OWN_TOP1, label=tr("target"),
                                          info=tr("target_info"), allow_custom_value=True, elem_id="target")
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


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, **kwargs):
    """Serve the app: no share link, 20 MB upload cap, English and Simplified Chinese, nothing from outside."""
    return demo.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_FILE_SIZE, i18n=I18N,
                       theme=theme(), css=CSS, ssr_mode=False, pwa=False, mcp_server=False,
                       enable_monitoring=False, show_error=False, **kwargs)


__all__ = ["AttnvizApp", "Analysis", "error_text", "installed_sets", "launch", "theme", "uploaded_image"]
