"""Results to pictures: CAM overlays, top-k charts, attention figures, comparisons, and the export zip.

Everything here takes the plain data of an ``Explanation`` and returns uint8 RGB arrays; nothing is computed
about the models.

    rendered = render_explanation(explanation, colormap="jet", opacity=0.5)
    rendered.models["cbam"].overlay          # (H, W, 3) uint8
    export_zip(explanation, rendered, "attnviz.zip")

Modules: ``pixels`` (lookup-table colormaps, overlays: numpy and Pillow only), ``templates`` (figures whose
fixed parts matplotlib draws once per layout and whose data a request paints), ``charts`` (one model's
figures), ``compare`` (figures comparing the models), ``explanation`` (everything for one explanation, the zip).
"""

from __future__ import annotations

from attnviz.render.charts import channel_weights_figure, excitation_figure, spatial_maps_figure, topk_chart
from attnviz.render.compare import TOP_FRACTION, VARIANT_COLOURS, agreement_figure, difference_figure
from attnviz.render.explanation import (
    KIND_FIGURES,
    Rendered,
    RenderedModel,
    attention_figures,
    export_zip,
    render_explanation,
)
from attnviz.render.pixels import (
    ATTENTION_COLORMAP,
    COLORMAPS,
    DIFFERENCE_COLORMAP,
    colorize,
    difference_overlay,
    overlay,
    resize_map,
)
from attnviz.render.templates import DPI, DRAW_LOCK, clear_templates, use_cjk_fallback

use_cjk_fallback()

__all__ = [
    "ATTENTION_COLORMAP", "COLORMAPS", "DIFFERENCE_COLORMAP", "DPI", "DRAW_LOCK", "KIND_FIGURES", "TOP_FRACTION",
    "VARIANT_COLOURS", "Rendered", "RenderedModel", "agreement_figure", "attention_figures", "channel_weights_figure",
    "clear_templates", "colorize", "difference_figure", "difference_overlay", "excitation_figure", "export_zip",
    "overlay", "render_explanation", "resize_map", "spatial_maps_figure", "topk_chart",
]
