"""render: overlays, figures and the export zip, from synthetic explanations made in the test."""

from __future__ import annotations

import gc
import io
import json
import weakref
import zipfile

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib import colormaps, font_manager
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from attnviz import render
from attnviz.attention import family
from attnviz.errors import AttnvizError
from attnviz.explainer import BlockAttention, ExplainSettings, Explanation, ModelResult, Prediction, top_region_iou
from attnviz.render import pixels, templates

CLASSES = ["circle", "square", "triangle", "star"]
STAGES = {"layer1": (3, 256, 16), "layer2": (4, 512, 8), "layer3": (6, 1024, 4), "layer4": (3, 2048, 2)}
SIZE = 64


def attention_records(variant: str, rng: np.random.Generator, value: float | None = None) -> list[BlockAttention]:
    """ResNet50's 16 blocks: one record per gate the family declares (channel weights, spatial maps)."""
    gates = family(variant).gates
    if not gates:
        return []
    records = []
    for stage, (blocks, channels, side) in STAGES.items():
        for i in range(blocks):
            record = BlockAttention(f"{stage}.{i}", variant)
            for gate in gates:
                if gate.kind == "channel":
                    values = np.full(channels, value, np.float32) if value is not None else rng.random(channels,
                                                                                                      np.float32)
                else:
                    values = rng.random((side, side), np.float32)
                record.records[gate.record] = values
                record.kinds[gate.record] = gate.kind
            records.append(record)
    return records


def model_result(variant: str, heatmap: np.ndarray, rng: np.random.Generator,
                 attention_value: float | None = None) -> ModelResult:
    probabilities = rng.dirichlet(np.ones(len(CLASSES))).astype(np.float32)
    order = np.argsort(-probabilities)
    top = [Prediction(int(i), CLASSES[i], float(probabilities[i])) for i in order]
    return ModelResult(variant=variant, probabilities=probabilities, top=top, target=top[0], heatmap=heatmap,
                       attention=attention_records(variant, rng, attention_value), seconds=0.1 + len(variant) / 10)


def make_explanation(heatmaps: dict[str, np.ndarray], seed: int = 0,
                     attention_value: float | None = None) -> Explanation:
    rng = np.random.default_rng(seed)
    view = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    explanation = Explanation(view=view, classes=CLASSES, set_name="synthetic",
                              settings=ExplainSettings(top_k=len(CLASSES), variants=tuple(heatmaps)))
    for variant, heatmap in heatmaps.items():
        explanation.results[variant] = model_result(variant, heatmap, rng, attention_value)
    names = list(heatmaps)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            explanation.agreement[f"{a}|{b}"] = top_region_iou(heatmaps[a], heatmaps[b])
    return explanation


def ramps() -> dict[str, np.ndarray]:
    """Three different maps in [0, 1]: left-to-right, top-to-bottom, a centred blob."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    blob = np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.05)
    return {"resnet50": xx, "se": yy, "cbam": blob / blob.max()}


@pytest.fixture(scope="module")
def explanation() -> Explanation:
    return make_explanation(ramps())


@pytest.fixture(scope="module")
def rendered(explanation) -> render.Rendered:
    return render.render_explanation(explanation, colormap="jet", opacity=0.5)


def strongly_coloured(image: np.ndarray, channel: int) -> int:
    """Pixels where red (0) or blue (2) clearly exceeds the other."""
    other = 2 - channel
    return int(((image[..., channel].astype(int) - image[..., other]) > 40).sum())


def test_overlay_has_the_views_size_and_is_uint8(explanation):
    out = render.overlay(explanation.view, explanation.results["cbam"].heatmap, "jet", 0.5)
    assert out.shape == explanation.view.shape and out.dtype == np.uint8


def test_overlay_at_zero_opacity_is_the_view(explanation):
    out = render.overlay(explanation.view, explanation.results["se"].heatmap, "jet", 0.0)
    np.testing.assert_array_equal(out, explanation.view)


def test_overlay_at_full_opacity_is_the_coloured_heatmap(explanation):
    heatmap = explanation.results["se"].heatmap
    out = render.overlay(explanation.view, heatmap, "viridis", 1.0)
    np.testing.assert_array_equal(out, render.colorize(heatmap, "viridis"))


def test_overlay_upsamples_a_small_heatmap_to_the_view(explanation):
    out = render.overlay(explanation.view, np.ones((7, 7), np.float32), "jet", 1.0)
    expected = (np.array(colormaps["jet"](1.0)[:3]) * 255 + 0.5).astype(np.uint8)
    assert out.shape == explanation.view.shape
    assert (out == expected).all()


def test_overlay_refuses_an_unknown_colormap(explanation):
    with pytest.raises(AttnvizError, match="unknown colormap"):
        render.overlay(explanation.view, explanation.results["se"].heatmap, "no-such-map", 0.5)


def test_overlay_refuses_opacity_outside_0_to_1(explanation):
    with pytest.raises(AttnvizError, match="opacity"):
        render.overlay(explanation.view, explanation.results["se"].heatmap, "jet", 1.5)


def test_topk_chart_grows_with_the_number_of_classes(explanation):
    result = explanation.results["se"]
    full = render.topk_chart(result)
    result_two = ModelResult(**{**vars(result), "top": result.top[:2]})
    two = render.topk_chart(result_two)
    assert full.dtype == np.uint8 and full.shape[2] == 3
    assert full.shape[1] == two.shape[1] == round(4.6 * render.DPI)
    assert full.shape[0] > two.shape[0]


def test_channel_weights_figure_is_none_without_attention_modules():
    assert render.channel_weights_figure([], "ResNet50") is None


def test_channel_weights_figure_colours_follow_the_weights():
    rng = np.random.default_rng(1)
    low = render.channel_weights_figure(attention_records("se", rng, value=0.0), "low")
    high = render.channel_weights_figure(attention_records("se", rng, value=1.0), "high")
    top_colour = (np.array(colormaps[render.ATTENTION_COLORMAP](1.0)[:3]) * 255).astype(int)

    def near_top(image):
        return int((np.abs(image.astype(int) - top_colour).sum(axis=2) < 30).sum())

    assert low.shape == high.shape
    assert near_top(high) > 20 * max(near_top(low), 1)  # strips fill with the top colour; only the colorbar has it


def test_models_with_the_same_blocks_share_one_channel_template_each_with_its_own_title():
    render.clear_templates()
    records = attention_records("se", np.random.default_rng(0), value=0.5)
    se = render.channel_weights_figure(records, "ResNet50 + SE: channel attention weights per block")
    eca = render.channel_weights_figure(records, "ResNet50 + ECA: channel attention weights per block")
    assert templates.templates_kept() == 1
    title_rows = np.abs(se.astype(int) - eca.astype(int)).max(axis=(1, 2)).nonzero()[0]
    assert len(title_rows) > 3 and title_rows.max() < 30  # only the titles, at the top, differ


def test_spatial_maps_figure_is_none_for_se():
    assert render.spatial_maps_figure(np.zeros((SIZE, SIZE, 3), np.uint8),
                                      attention_records("se", np.random.default_rng(0))) is None


def test_spatial_maps_figure_has_a_4x4_grid_for_cbams_16_blocks():
    records = attention_records("cbam", np.random.default_rng(0))
    image = render.spatial_maps_figure(np.zeros((SIZE, SIZE, 3), np.uint8), records)
    assert len(records) == 16
    assert image.shape == (round(render.DPI * (1.45 * 4 + 0.5)), round(render.DPI * (1.2 * 4 + 0.9)), 3)


def test_difference_figure_is_none_for_a_single_model():
    assert render.difference_figure(make_explanation({"se": ramps()["se"]})) is None


def test_difference_figure_is_red_where_the_first_map_is_higher():
    zeros, ones = np.zeros((SIZE, SIZE), np.float32), np.ones((SIZE, SIZE), np.float32)
    agreeing = render.difference_figure(make_explanation({"se": zeros, "cbam": zeros}))
    first_higher = render.difference_figure(make_explanation({"se": ones, "cbam": zeros}))
    assert strongly_coloured(first_higher, 0) - strongly_coloured(agreeing, 0) > 20_000  # the whole panel turns red
    assert strongly_coloured(first_higher, 2) <= strongly_coloured(agreeing, 2)  # blue only in the colorbar


def test_agreement_figure_drops_the_iou_panel_for_a_single_model(explanation):
    three = render.agreement_figure(explanation)
    one = render.agreement_figure(make_explanation({"cbam": ramps()["cbam"]}))
    assert three.shape == (round(3.4 * render.DPI), round(3 * 3.4 * render.DPI), 3)
    assert one.shape == (round(3.4 * render.DPI), round(2 * 3.4 * render.DPI), 3)


def test_render_explanation_draws_no_attention_figures_for_resnet50(rendered):
    assert rendered.models["resnet50"].channel_weights is None
    assert rendered.models["resnet50"].spatial_maps is None
    assert rendered.models["se"].channel_weights is not None and rendered.models["se"].spatial_maps is None
    assert rendered.models["cbam"].channel_weights is not None and rendered.models["cbam"].spatial_maps is not None


def figures_of(rendered: render.Rendered) -> dict[str, np.ndarray]:
    return {name: image for name, image in rendered.images().items() if "overlay" not in name and name != "view.png"}


def smooth_explanation(seed: int) -> Explanation:
    """Maps and attention that vary smoothly (no detail finer than a pixel of the figures), four models."""
    maps = ramps()
    maps["eca"] = 0.5 * maps["se"] + 0.5 * maps["resnet50"]
    explanation = make_explanation(maps, seed=seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    explanation.view = (np.stack([xx, yy, 1 - xx * yy], axis=2) * 255).astype(np.uint8)
    for result in explanation.results.values():
        for record in result.attention:
            for name, values in record.records.items():
                if values.ndim == 1:
                    record.records[name] = np.linspace(0.1, 0.9, values.size, dtype=np.float32)[::-1].copy()
                else:
                    yy, xx = np.mgrid[0:values.shape[0], 0:values.shape[1]] / max(values.shape[0] - 1, 1)
                    record.records[name] = (0.2 + 0.6 * xx * yy).astype(np.float32)
    return explanation


def test_render_tells_of_each_picture_as_it_is_drawn_heatmaps_first(explanation):
    told = []
    rendered = render.render_explanation(explanation, drawn=lambda name, picture: told.append((name, picture)))
    images = {name[:-4]: image for name, image in rendered.images().items() if "top_k" not in name}
    assert [name for name, _ in told][:1 + len(explanation.results)] == \
        ["view", *(f"{v}_overlay" for v in explanation.results)]
    assert {name for name, _ in told} == set(images) and len(told) == len(images)
    assert all(picture is images[name] for name, picture in told)


def test_painted_figures_match_full_matplotlib_draws(monkeypatch):
    """The painted figures put each request's data in the boxes, colours and scale of a full matplotlib draw of
    the same figure: only text rendering and resampling differ, by a few grey levels."""
    render.clear_templates()
    render.render_explanation(make_explanation(ramps(), seed=1))  # the templates now hold another image's data
    shown = smooth_explanation(seed=2)
    painted = figures_of(render.render_explanation(shown))
    monkeypatch.setattr(templates, "FULL_DRAW", True)
    full = figures_of(render.render_explanation(shown))
    assert set(painted) == set(full) and len(full) == 10  # 4 top-k, 3 channel, 1 spatial, differences, agreement
    for name, image in full.items():
        assert painted[name].shape == image.shape, name
        difference = np.abs(painted[name].astype(int) - image.astype(int)).max(axis=2)
        assert difference.mean() < 4.0, (name, difference.mean())
        assert (difference > 80).mean() < 0.02, (name, (difference > 80).mean())  # outlines: a pixel apart


def test_painted_text_is_the_requests_number():
    """A number painted into a figure (an IoU cell) changes the pixels where the full draw writes it."""
    maps = ramps()
    same = render.agreement_figure(make_explanation({"se": maps["se"], "cbam": maps["se"]}))
    disjoint = render.agreement_figure(make_explanation({"se": maps["se"], "cbam": 1 - maps["se"]}))
    changed = np.argwhere(np.abs(same.astype(int) - disjoint.astype(int)).max(axis=2) > 60)
    assert len(changed) > 200  # the off-diagonal cells: their colour, and 1.00 against 0.00 written in them


def test_painted_texts_are_pillows_own_to_the_bit():
    """Texts are written from cached glyph masks: the pixels equal Pillow drawing each text afresh, for every
    alignment, at whole and fractional positions, over any background, the first time and from the cache."""
    figure = Figure(figsize=(3, 2), dpi=templates.DPI)
    artists = []
    for i, (ha, va) in enumerate([("left", "baseline"), ("center", "center"), ("right", "top"), ("center", "bottom"),
                                  ("left", "center_baseline")]):
        artists.append(figure.text(0.1 + 0.17 * i + 0.0013 * i, 0.15 + 0.16 * i, "x", ha=ha, va=va,
                                   fontsize=7 + 1.5 * i))
    rng = np.random.default_rng(3)
    background = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    writes = [(artist, text, colour) for artist in artists
              for text, colour in [("0.83", "black"), ("−0.07 s", "white"), ("layer4.2", "#d97706")]]
    for _ in range(2):  # the second time every mask comes from the cache
        for artist, text, colour in writes:
            canvas = templates.Canvas(figure, background.copy())
            canvas.text(artist, text, colour)
            canvas._draw_texts()
            picture = Image.fromarray(background.copy())
            x, y = artist.get_transform().transform(artist.get_position())
            font = templates._font(font_manager.findfont(artist.get_fontproperties()),
                                   artist.get_fontsize() * templates.DPI / 72.0)
            anchor = templates._ANCHOR_X[artist.get_horizontalalignment()] + \
                templates._ANCHOR_Y[artist.get_verticalalignment()]
            ImageDraw.Draw(picture).text((x, 200 - y), text, font=font, anchor=anchor,
                                         fill=tuple(int(v) for v in pixels.colour_rgb(colour)))
            assert np.array_equal(canvas.pixels, np.asarray(picture)), (text, anchor)
            assert not np.array_equal(canvas.pixels, background)


def test_colorize_gives_matplotlibs_colours_exactly():
    values = np.concatenate([np.linspace(-0.2, 1.2, 2001), [0.0, 1.0, 0.5, 1 / 256, 255 / 256]]).astype(np.float32)
    for name in (*render.COLORMAPS, render.DIFFERENCE_COLORMAP, "Greens"):
        expected = (colormaps[name](np.clip(values, 0, 1))[:, :3] * 255.0 + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(render.colorize(values[None], name)[0], expected, err_msg=name)
    np.testing.assert_array_equal(render.colorize(np.array([[-1.0, 0.0, 1.0]]), "RdBu_r", -1.0, 1.0)[0],
                                  (colormaps["RdBu_r"]([0.0, 0.5, 1.0])[:, :3] * 255 + 0.5).astype(np.uint8))


def test_strip_averages_the_channels_a_pixel_column_covers():
    values = np.arange(8, dtype=np.float32)[None].repeat(2, axis=0)
    values[1] += 100
    shown = pixels.strip(values, (4, 4))
    np.testing.assert_allclose(shown, [[0.5, 2.5, 4.5, 6.5]] * 2 + [[100.5, 102.5, 104.5, 106.5]] * 2)
    np.testing.assert_array_equal(pixels.strip(values[:, :2], (2, 4)), [[0, 0, 1, 1], [100, 100, 101, 101]])


def test_outline_is_a_closed_band_around_the_region_even_at_the_border():
    mask = np.zeros((10, 10), bool)
    mask[0:4, 3:7] = True  # touches the top border
    band = pixels.outline(mask)
    assert band[0, 3] and band[0, 6] and band[3, 4] and band[4, 4] and band[2, 2]  # the top edge too, and outside
    assert not band[1:3, 4:6].any()  # the inside stays clear
    assert not band[7:].any()


def test_a_template_shows_each_requests_own_data():
    first = render.agreement_figure(make_explanation(ramps(), seed=1))
    flipped = render.agreement_figure(make_explanation({k: 1 - v for k, v in ramps().items()}, seed=1))
    again = render.agreement_figure(make_explanation(ramps(), seed=1))
    assert not np.array_equal(first, flipped)
    np.testing.assert_array_equal(first, again)


def test_templates_are_bounded_and_pyplot_holds_no_figure(monkeypatch):
    made = []

    class TrackedFigure(Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    monkeypatch.setattr(templates, "Figure", TrackedFigure)
    monkeypatch.setattr(templates, "MAX_TEMPLATES", 3)
    render.clear_templates()
    explanation = make_explanation(ramps())
    for colormap in ("jet", "viridis", "gray", "hot", "magma"):  # the spatial grid has one layout per colormap
        render.spatial_maps_figure(explanation.view, explanation.results["cbam"].attention, colormap)
    render.spatial_maps_figure(explanation.view, explanation.results["cbam"].attention, "magma")
    gc.collect()
    assert len(made) == 5  # the repeated layout was drawn from its template
    assert sum(ref() is not None for ref in made) <= 3
    assert plt.get_fignums() == []
    render.clear_templates()


def test_top_k_charts_are_drawn_only_when_asked_for(explanation, monkeypatch):
    calls = []
    monkeypatch.setattr(render.explanation, "topk_chart",
                        lambda result: calls.append(result.variant) or np.zeros((2, 2, 3)))
    rendered = render.render_explanation(explanation)
    assert calls == []
    rendered.images()
    assert calls == list(ramps())


def read_zip(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_export_zip_holds_every_picture_shown_as_png(explanation, rendered, tmp_path):
    files = read_zip(render.export_zip(explanation, rendered, tmp_path / "out.zip"))
    images = rendered.images()
    assert {"view.png", "resnet50_overlay.png", "se_channel_weights.png", "cbam_spatial_maps.png",
            "difference_maps.png", "agreement.png"} <= set(images)
    for name, image in images.items():
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(files[name]))), image)


def test_export_zip_heatmaps_npz_has_each_models_map(explanation, rendered, tmp_path):
    files = read_zip(render.export_zip(explanation, rendered, tmp_path / "out.zip"))
    heatmaps = np.load(io.BytesIO(files["heatmaps.npz"]))
    for variant, result in explanation.results.items():
        np.testing.assert_array_equal(heatmaps[variant], result.heatmap)
        np.testing.assert_array_equal(heatmaps[f"{variant}_probabilities"], result.probabilities)
    np.testing.assert_array_equal(heatmaps["view"], explanation.view)


def test_export_zip_attention_npz_has_channel_weights_and_cbam_spatial_maps(explanation, rendered, tmp_path):
    files = read_zip(render.export_zip(explanation, rendered, tmp_path / "out.zip"))
    attention = np.load(io.BytesIO(files["attention.npz"]))
    cbam = explanation.results["cbam"].attention
    np.testing.assert_array_equal(attention["cbam/layer3.2/channel_weights"], cbam[9].channel_weights)
    np.testing.assert_array_equal(attention["cbam/layer3.2/spatial_map"], cbam[9].spatial_map)
    assert "se/layer4.2/channel_weights" in attention and "se/layer4.2/spatial_map" not in attention
    assert not any(key.startswith("resnet50/") for key in attention)


def test_export_zip_summary_json_has_predictions_and_settings(explanation, rendered, tmp_path):
    files = read_zip(render.export_zip(explanation, rendered, tmp_path / "out.zip"))
    summary = json.loads(files["summary.json"])
    assert summary["models"]["se"]["top"][0]["name"] == explanation.results["se"].top[0].name
    assert summary["settings"]["method"] == "gradcam"
    assert summary["render"] == {"colormap": "jet", "opacity": 0.5}
    assert set(summary["agreement_top20_iou"]) == {"resnet50|se", "resnet50|cbam", "se|cbam"}
    assert sorted(summary["files"]) == sorted(files)


def test_excitation_figure_draws_this_images_weights_over_the_class_means(monkeypatch):
    profile = {"classes": {"dog": [0.2] * 16, "cat": [0.8] * 16, "fish": [0.5] * 16}, "all": [0.5] * 16}
    low = render.excitation_figure(profile, np.zeros(32, np.float32), "SE, layer4.1", highlight="cat")
    high = render.excitation_figure(profile, np.ones(32, np.float32), "SE, layer4.1", highlight="cat")
    assert low.shape == high.shape and low.dtype == np.uint8 and not np.array_equal(low, high)
    monkeypatch.setattr(templates, "FULL_DRAW", True)  # the blitted template's pixels are those of a full draw
    np.testing.assert_array_equal(high, render.excitation_figure(profile, np.ones(32, np.float32), "SE, layer4.1",
                                                                 highlight="cat"))
