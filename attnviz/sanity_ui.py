"""The app's "sanity check this image" option: the cascading randomisation test of the uploaded image with the
chosen method at layer4 for every shown model (``attnviz.sanity.check_image``), its plot and one line per model.

``attnviz.ui`` places these parts and calls ``run``; the test runs on one private copy of one model at a time,
never on the models serving requests.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from attnviz.attention import family
from attnviz.errors import AttnvizError
from attnviz.methods import CAM_METHODS
from attnviz.models import VARIANTS
from attnviz.sanity import (
    DEFAULT_LAYER,
    EDGES,
    EDGES_LABEL,
    THRESHOLD,
    ImageSanity,
    check_image,
    check_methods,
    depth_labels,
)


def build_control(c: dict, tr: Callable) -> None:
    """The checkbox, in the attention lab's accordion."""
    c["sanity"] = gr.Checkbox(False, label=tr("sanity"), info=tr("sanity_info"), elem_id="sanity")


def build_outputs(c: dict, tr: Callable, figure: Callable) -> None:
    """The result's column under the comparison: hidden until a sanity check has run."""
    with gr.Column(visible=False, elem_id="sanity-column") as column:
        c["sanity_column"] = column
        gr.Markdown(tr("sanity_caption"), elem_classes=["attnviz-caption"])
        c["sanity_status"] = gr.Markdown("", elem_id="sanity-status")
        c["sanity_plot"] = figure("sanity-plot")
        for variant in VARIANTS:
            c[f"sanity_{variant}"] = gr.Markdown("", elem_id=f"sanity-{variant}")
        gr.Markdown(tr("sanity_rule"), elem_classes=["attnviz-note"])


def output_names() -> list[str]:
    return ["sanity_column", "sanity_status", "sanity_plot", *(f"sanity_{v}" for v in VARIANTS)]


def check_method(method: str) -> None:
    """One line when the method cannot be sanity-checked here: Score-CAM and Ablation-CAM (thousands of passes),
    and a method that runs pytorch-grad-cam's own call (its own passes: about 26 s for the built-in set with
    Guided Grad-CAM, measured, past the page's 15 s; the library still runs it)."""
    check_methods([method])
    own_call = getattr(CAM_METHODS[method], "own_call", "")
    if own_call:
        raise AttnvizError(f"{CAM_METHODS[method].label} runs pytorch-grad-cam's own call ({own_call}): its sanity "
                           f"check takes about half a minute per image here; choose a method that runs on the one "
                           f"pass, or run attnviz.sanity.check_image from Python")


def run(explainer, image, method: str, variants: list[str],
        progress: Callable[[float, str], None] | None = None) -> ImageSanity:
    """The test of one image at layer4 for the chosen models (each explaining its own top-1 class)."""
    check_method(method)
    return check_image(explainer, image, method, variants, layer=DEFAULT_LAYER, progress=progress)


def verdict_line(report: ImageSanity, variant: str, t: Callable) -> str:
    """One model's line: its verdict on this image and the numbers behind it (one translated text per line)."""
    found = report.models[variant]
    spearman = float(found.final(report.method)[0])
    ssim_value = float(found.final(report.method, "ssim")[0])
    word = t("sanity_passes") if report.passes(variant) else t("sanity_fails")
    return (f"**{family(variant).title}** ({report.classes[found.targets[0]]}): {word} · Spearman {spearman:.2f} · "
            f"SSIM {ssim_value:.2f} · {found.seconds:.1f} s")


def figure(report: ImageSanity) -> np.ndarray:
    """Spearman correlation with the original map against randomisation depth: one line per model, the edge
    map's (which ignores the model), and the rule's 0.5 line."""
    from attnviz.render import DRAW_LOCK as _DRAW_LOCK

    first = next(iter(report.models.values()))
    depth = np.arange(len(first.steps) + 1)
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    try:
        ax = fig.add_subplot()
        for variant, found in report.models.items():
            ax.plot(depth, found.cascade["spearman"][report.method][:, 0], marker="o", ms=3,
                    color=family(variant).colour, label=family(variant).title)
        ax.plot(depth, first.cascade["spearman"][EDGES][:, 0], color="black", ls="--", label=EDGES_LABEL)
        ax.axhline(THRESHOLD, color="grey", ls=":", lw=1, label=f"rule: below {THRESHOLD:g} passes")
        ax.set_xticks(depth, depth_labels(first.steps), fontsize=8)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("steps randomised from the top (0: the original)")
        ax.set_ylabel("Spearman with the original")
        ax.set_title(f"{CAM_METHODS[report.method].label} at {report.layer}: sanity check of this image", fontsize=10)
        ax.grid(alpha=0.3)
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8, frameon=False)
        canvas = FigureCanvasAgg(fig)
        with _DRAW_LOCK:
            canvas.draw()
            return np.asarray(canvas.buffer_rgba())[..., :3].copy()
    finally:
        fig.clear()


def values(c: dict, analysis, t: Callable) -> dict:
    """The sanity column's components for a result on show (None after an error: left as they are)."""
    if analysis is None:
        return {c[name]: gr.skip() for name in output_names()}
    report = getattr(analysis, "sanity", None)
    out: dict = {c["sanity_column"]: gr.Column(visible=report is not None)}
    if report is None:
        return out | {c["sanity_status"]: "", c["sanity_plot"]: None, **{c[f"sanity_{v}"]: "" for v in VARIANTS}}
    out[c["sanity_status"]] = (f"{t('sanity_done')} {report.seconds:.1f} s · {CAM_METHODS[report.method].label} · "
                               f"{report.layer}")
    out[c["sanity_plot"]] = analysis.image_file("sanity_check", figure(report))
    for variant in VARIANTS:
        out[c[f"sanity_{variant}"]] = verdict_line(report, variant, t) if variant in report.models else ""
    return out


def summary(report: ImageSanity | None) -> dict | None:
    """The endpoint's ``sanity`` entry (None when not asked for)."""
    return None if report is None else report.summary()
