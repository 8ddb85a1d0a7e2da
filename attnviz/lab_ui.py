"""The attention lab's parts of the app: knock-out controls and columns, and the live per-class excitation.

``attnviz.ui`` places these in its page; the library computes (``explain(..., knockout=...)``), ``render``
draws (``RenderedModel.knockout_overlay``, ``excitation_figure``), and this module only wires components.
The per-class excitation profiles come from the set's analysis (``analysis.json``, excitation profiles of the
SE paper's blocks); a set without them says so and how to make them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import numpy as np

from attnviz import sanity_ui
from attnviz.attention import family
from attnviz.errors import AttnvizError
from attnviz.knockout import KNOCKOUT_VALUES
from attnviz.render import excitation_figure
from attnviz.results import Explanation

NO_BLOCK = "none"
SE_PAPER_BLOCKS = ("layer1.2", "layer2.3", "layer3.5", "layer4.0", "layer4.1", "layer4.2")

_PROFILES: dict[tuple[str, str], dict | None] = {}
_PROFILES_LOCK = threading.Lock()


def excitation_profiles(weights_dir: Path, set_name: str) -> dict | None:
    """variant -> block -> profile, from the set's analysis.json (read once per set); None when it has none."""
    from attnviz.analysis.results import analysis_dir, read_result

    key = (str(weights_dir), set_name)
    with _PROFILES_LOCK:
        if key not in _PROFILES:
            try:
                result = read_result(analysis_dir(weights_dir, set_name))
                _PROFILES[key] = {v: e.get("profiles", {}) for v, e in result.get("excitation", {}).items()} or None
            except AttnvizError:
                _PROFILES[key] = None
        return _PROFILES[key]


def has_channel_gate(variant: str) -> bool:
    return "channel" in family(variant).kinds()


def build_controls(c: dict, tr: Callable) -> None:
    """The lab's controls, in an accordion under the method's."""
    with gr.Accordion(tr("lab_title"), open=False, elem_id="lab"):
        c["knockout"] = gr.Textbox("", label=tr("knockout"), info=tr("knockout_info"), placeholder="layer4.*:spatial",
                                   elem_id="knockout", max_lines=1)
        c["knockout_value"] = gr.Radio(list(KNOCKOUT_VALUES), value="identity", label=tr("knockout_value"),
                                       info=tr("knockout_value_info"), elem_id="knockout-value")
        c["excitation_block"] = gr.Dropdown([(tr("excitation_none"), NO_BLOCK), *((b, b) for b in SE_PAPER_BLOCKS)],
                                            value=NO_BLOCK, label=tr("excitation_block"),
                                            info=tr("excitation_block_info"), elem_id="excitation-block")
        sanity_ui.build_control(c, tr)


def build_model_parts(c: dict, variant: str, tr: Callable, figure: Callable, label: Callable) -> None:
    """One model's column: the answer with the gates off (hidden until a knock-out is asked for) and, for a
    model with channel attention, its excitation against the class means."""
    with gr.Column(visible=False, elem_id=f"knockout-column-{variant}") as column:
        c[f"{variant}_knockout_column"] = column
        gr.Markdown(tr("knockout_caption"), elem_classes=["attnviz-caption"])
        c[f"{variant}_knockout_info"] = gr.Markdown("", elem_id=f"knockout-info-{variant}")
        with gr.Column(visible=False, elem_id=f"knockout-figures-{variant}") as figures:  # only when affected
            c[f"{variant}_knockout_figures"] = figures
            c[f"{variant}_knockout_overlay"] = figure(f"knockout-overlay-{variant}")
            gr.Markdown(tr("knockout_difference"), elem_classes=["attnviz-note"])
            c[f"{variant}_knockout_difference"] = figure(f"knockout-difference-{variant}")
            c[f"{variant}_knockout_top"] = label(f"knockout-top-{variant}")
    if has_channel_gate(variant):
        with gr.Column(visible=False, elem_id=f"excitation-column-{variant}") as column:
            c[f"{variant}_excitation_column"] = column
            gr.Markdown(tr("excitation_caption"), elem_classes=["attnviz-caption"])
            c[f"{variant}_excitation"] = figure(f"excitation-{variant}")
            c[f"{variant}_excitation_note"] = gr.Markdown("", elem_id=f"excitation-note-{variant}")


def output_names(variant: str) -> list[str]:
    names = [f"{variant}_knockout_{part}" for part in ("column", "info", "figures", "overlay", "difference", "top")]
    if has_channel_gate(variant):
        names += [f"{variant}_excitation_column", f"{variant}_excitation", f"{variant}_excitation_note"]
    return names


def excitation_images(explanation: Explanation, block: str, profiles: dict | None) -> dict[str, np.ndarray | None]:
    """variant -> the excitation figure of ``block`` for every shown model with channel attention (None: the set
    has no profile for it)."""
    if block in (None, "", NO_BLOCK):
        return {}
    out: dict[str, np.ndarray | None] = {}
    for variant, result in explanation.results.items():
        if not has_channel_gate(variant):
            continue
        profile = (profiles or {}).get(variant, {}).get(block)
        record = next((r for r in result.attention if r.block == block), None)
        if profile is None or record is None or record.channel_weights is None:
            out[variant] = None
            continue
        title = f"{result.title}, {block}: this image against the class means"
        out[variant] = excitation_figure(profile, record.channel_weights, title, highlight=result.target.name)
    return out


def values(c: dict, variant: str, analysis, t: Callable) -> dict:
    """The lab's components of one model column for a result on show (None after an error: left as they are)."""
    if analysis is None:
        return {c[name]: gr.skip() for name in output_names(variant)}
    result = analysis.explanation.results.get(variant)
    knocked = result.knockout if result is not None else None
    drawn = analysis.rendered.models.get(variant)
    out: dict = {c[f"{variant}_knockout_column"]: gr.Column(visible=knocked is not None),
                 c[f"{variant}_knockout_figures"]: gr.Column(visible=knocked is not None and knocked.affected)}
    if knocked is not None and knocked.affected:
        out[c[f"{variant}_knockout_info"]] = (
            f"**{knocked.spec}** · {knocked.value} · {len(knocked.gates)} gates · **{knocked.target.name}** "
            f"{knocked.target.probability:.1%} ({knocked.target_change:+.1%}) · top-20 % IoU {knocked.iou_top20:.2f}")
        out[c[f"{variant}_knockout_overlay"]] = analysis.image_file(f"{variant}_knockout_overlay",
                                                                    drawn.knockout_overlay)
        out[c[f"{variant}_knockout_difference"]] = analysis.image_file(f"{variant}_knockout_difference",
                                                                       drawn.knockout_difference)
        out[c[f"{variant}_knockout_top"]] = {p.name: p.probability for p in knocked.top}
    else:
        out[c[f"{variant}_knockout_info"]] = t("knockout_unaffected") if knocked is not None else ""
        out[c[f"{variant}_knockout_overlay"]] = None
        out[c[f"{variant}_knockout_difference"]] = None
        out[c[f"{variant}_knockout_top"]] = None
    if has_channel_gate(variant):
        shown = variant in analysis.excitation
        image = analysis.excitation.get(variant)
        out[c[f"{variant}_excitation_column"]] = gr.Column(visible=shown)
        out[c[f"{variant}_excitation"]] = analysis.image_file(f"{variant}_excitation", image) if image is not None \
            else None
        out[c[f"{variant}_excitation_note"]] = t("excitation_missing") if shown and image is None else ""
    return out
