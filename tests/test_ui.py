"""The app's handlers, called directly with the tiny set: no server, no browser."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from attnviz import ui
from attnviz.errors import ERROR_CODES, AttnvizError
from attnviz.explainer import ExplainSettings
from attnviz.images import load_image, preprocess
from attnviz.models import VARIANTS
from attnviz.render import overlay
from attnviz.texts import LANGUAGES, locale

DONE = ui.t("done")
ONE_MODEL = ["resnet50"]  # where only the image handling is under test, one model is enough


@pytest.fixture(scope="module")
def app(tiny_weights_dir) -> ui.AttnvizApp:
    app = ui.AttnvizApp(tiny_weights_dir)
    app.build()  # the handlers answer with values for the built components
    return app


def page(app: ui.AttnvizApp, image, **options) -> dict:
    """Call the page's handler with the page's defaults; the outputs by component name."""
    settings = {"model_set": "tiny", "models": list(VARIANTS), "method": "gradcam",
                "target": ui.OWN_TOP1, "layer": "layer4", "opacity": 0.5, "colormap": "jet", "aug_smooth": False,
                "eigen_smooth": False, **options}
    out = app.explain_page(image, **settings)
    return {name: out[app.components[name]] for name in app._page_output_names()}


def download(app: ui.AttnvizApp, out: dict) -> Path:
    """Click "prepare the download" for the results a page call returned: the zip's path."""
    answer = app.archive_page(out["last"])
    return Path(answer[app.components["download"]])


def pixels(value) -> np.ndarray:
    """An image output's pixels: the handlers hand gradio PNG files of the request's own."""
    assert isinstance(value, str) and value.endswith(".png"), value
    return np.asarray(Image.open(value).convert("RGB"))


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def scene(size: tuple[int, int] = (96, 80), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = (230, 20, 20)
    return Image.fromarray(pixels)


def view_of(path: Path, tiny_weights_dir: Path) -> np.ndarray:
    from attnviz.weights import Manifest

    return preprocess(load_image(path), Manifest(tiny_weights_dir).get("tiny").preprocessing).view


def png_claiming_size(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb's signature."""
    data = io.BytesIO()
    Image.new("L", (40, 40)).save(data, format="PNG")
    raw = bytearray(data.getvalue())
    ihdr = raw[12:29]  # type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(raw)


def assert_cleared_with_message(out: dict, words: str) -> None:
    assert out["status"].startswith("⚠️") and words in out["status"]
    for variant in VARIANTS:
        assert out[f"{variant}_overlay"] is None and out[f"{variant}_top"] is None
    assert out["agreement"] is None and out["download"] is None and out["last"] is None


# ----------------------------------------------------------------------------- valid requests


@pytest.mark.slow
def test_page_shows_three_overlays_top_k_and_attention_figures(app, tmp_path):
    out = page(app, save(scene(), tmp_path / "scene.png"))
    assert out["status"].startswith(DONE)
    for variant in VARIANTS:
        assert pixels(out[f"{variant}_overlay"]).shape == (64, 64, 3)
        assert len(out[f"{variant}_top"]) == 4 and abs(sum(out[f"{variant}_top"].values()) - 1) < 1e-4
    assert out["se_channel"] is not None and out["cbam_channel"] is not None and out["cbam_spatial"] is not None
    assert out["eca_channel"] is not None and "eca_spatial" not in out
    assert out["difference"] is not None and out["agreement"] is not None
    assert out["download"] is None and out["last"].archive is None  # the zip is written only when asked for
    assert zipfile.is_zipfile(download(app, out))


def test_every_file_the_page_and_the_api_show_holds_the_drawn_picture_exactly(app, tmp_path):
    """The pictures are written (some while the others are drawn) as PNGs that decode to the drawn arrays, in
    RGB order, and a finished request leaves no file being written."""
    out = page(app, save(scene(seed=4), tmp_path / "scene.png"))
    analysis = out["last"]
    assert not analysis.writing
    drawn = analysis.rendered.models
    shown = {"difference": analysis.rendered.difference, "agreement": analysis.rendered.agreement,
             **{f"{v}_overlay": m.overlay for v, m in drawn.items()},
             "se_channel": drawn["se"].channel_weights, "cbam_spatial": drawn["cbam"].spatial_maps}
    for name, picture in shown.items():
        assert np.array_equal(pixels(out[name]), picture), name
    summary, images, _ = app.explain_api(save(scene(seed=4), tmp_path / "scene2.png"), "tiny", ["se", "cbam"],
                                         "gradcam", ui.OWN_TOP1, "layer4", 0.5, "jet", False, False)
    assert np.array_equal(pixels(images[1][0]), drawn["se"].overlay)
    assert np.array_equal(pixels(images[2][0]), drawn["cbam"].overlay)
    assert {p.name for p in Path(images[0][0]).parent.iterdir()} == {"view.png", "se_overlay.png",
                                                                     "cbam_overlay.png"}


def test_the_zip_is_written_once_per_result_and_only_for_a_result(app, tmp_path):
    out = page(app, save(scene(), tmp_path / "scene.png"), models=ONE_MODEL)
    first = download(app, out)
    assert download(app, out) == first
    nothing = app.archive_page(None)
    assert nothing[app.components["download"]] is None
    assert ui.t("zip_none") in nothing[app.components["status"]]


def test_resnet50_column_has_no_attention_figures_but_a_note(app):
    assert "resnet50_channel" not in app.components and "resnet50_spatial" not in app.components
    blocks = app.components["resnet50_column"].children
    notes = [b for b in blocks if isinstance(b, gr.Markdown) and b.elem_id == "note-resnet50"]
    assert notes and "family_resnet50_note" in str(notes[0].value)


def test_unchosen_models_get_hidden_columns(app, tmp_path):
    out = page(app, save(scene(), tmp_path / "scene.png"), models=["cbam"])
    assert out["cbam_column"].visible is True
    assert out["resnet50_column"].visible is False and out["se_column"].visible is False
    assert out["difference_column"].visible is False  # one model: nothing to compare


def test_a_chosen_target_class_is_explained_by_every_model(app, tmp_path):
    analysis = app.analyse(save(scene(), tmp_path / "scene.png"), "tiny", target="triangle")
    assert {r.target.name for r in analysis.explanation.results.values()} == {"triangle"}


def test_layer_method_and_colormap_reach_explain_and_render(app, tmp_path):
    path = save(scene(), tmp_path / "scene.png")
    analysis = app.analyse(path, "tiny", models=["se"], method="eigencam", layer="layer2", colormap="viridis",
                           opacity=1.0)
    assert analysis.explanation.settings.method == "eigencam" and analysis.explanation.settings.layer == "layer2"
    result = analysis.explanation.results["se"]
    np.testing.assert_array_equal(analysis.rendered.models["se"].overlay,
                                  overlay(analysis.explanation.view, result.heatmap, "viridis", 1.0))


@pytest.mark.slow
def test_zip_of_a_request_holds_that_requests_view(app, tmp_path, tiny_weights_dir):
    path = save(scene(seed=3), tmp_path / "scene.png")
    out = page(app, path)
    with zipfile.ZipFile(download(app, out)) as archive:
        view = np.asarray(Image.open(archive.open("view.png")))
    np.testing.assert_array_equal(view, view_of(path, tiny_weights_dir))


@pytest.mark.slow
def test_score_cam_reports_progress_with_a_time_estimate(app, tmp_path, monkeypatch):
    monkeypatch.setattr(ui, "TIME_LIMIT_S", None)  # under test: the progress, not the cap (a busy machine is slow)
    messages = []
    app.analyse(save(scene(), tmp_path / "scene.png"), "tiny", models=["resnet50"], method="scorecam",
                layer="layer1", progress=lambda fraction, desc: messages.append(desc))
    assert any("s left" in m and "batch" in m for m in messages)


def test_score_cam_past_the_time_cap_stops_with_a_clear_message(app, tmp_path, monkeypatch):
    monkeypatch.setattr(ui, "TIME_LIMIT_S", 0.0)
    out = page(app, save(scene(), tmp_path / "scene.png"), models=ONE_MODEL, method="scorecam", layer="layer1")
    assert_cleared_with_message(out, "time limit")
    assert out["status"].startswith("⚠️ " + ui.t("err_time_limit"))


def test_page_states_the_time_cap_for_slow_methods():
    assert f"{ui.TIME_LIMIT_S} s" in ui.TRANSLATIONS["en"]["method_info"]
    assert f"{ui.TIME_LIMIT_S} 秒" in ui.TRANSLATIONS["zh-CN"]["method_info"]


def test_set_change_lists_the_sets_classes(app):
    out = app.set_changed("tiny")
    choices = [value for _, value in out[app.components["target"]].choices]
    assert choices == [ui.OWN_TOP1, "circle", "square", "triangle", "star"]
    assert "circle, square, triangle, star" in out[app.components["classes"]]
    assert out[app.components["builtin_note"]].visible is False
    assert all(out[app.components[f"{v}_column"]].visible for v in VARIANTS)


def test_api_handler_returns_summary_view_overlays_and_zip(app, tmp_path):
    summary, images, archive = app.explain_api(save(scene(), tmp_path / "scene.png"), "tiny", ["se", "cbam"],
                                               "gradcam", ui.OWN_TOP1, "layer4", 0.5, "jet", False, False)
    assert list(summary["models"]) == ["se", "cbam"] and summary["classes"] == ["circle", "square", "triangle",
                                                                                 "star"]
    assert [caption for _, caption in images] == ["view", "se: ResNet50 + SE", "cbam: ResNet50 + CBAM"]
    assert archive is None  # not asked for
    *_, archive = app.explain_api(save(scene(), tmp_path / "scene.png"), "tiny", ["se"], "gradcam", ui.OWN_TOP1,
                                  "layer4", 0.5, "jet", False, False, "fp32", True)
    with zipfile.ZipFile(archive) as opened:
        assert "se_overlay.png" in opened.namelist()


def test_api_handler_raises_a_gradio_error_with_the_message(app, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(gr.Error, match="empty"):
        app.explain_api(empty, "tiny", None, "gradcam", ui.OWN_TOP1, "layer4", 0.5, "jet", False, False)


# ----------------------------------------------------------------------------- odd but valid images


def test_animated_gif_uses_its_first_frame(app, tmp_path, tiny_weights_dir):
    red, blue = Image.new("RGB", (80, 80), (255, 0, 0)), Image.new("RGB", (80, 80), (0, 0, 255))
    path = save(red, tmp_path / "anim.gif", save_all=True, append_images=[blue], duration=100, loop=0)
    view = app.analyse(path, "tiny", models=ONE_MODEL).explanation.view
    assert view[..., 0].mean() > 200 and view[..., 2].mean() < 50


def test_cmyk_jpeg_is_accepted(app, tmp_path):
    path = save(scene().convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    assert page(app, path, models=ONE_MODEL)["status"].startswith(DONE)


def test_16_bit_png_is_accepted(app, tmp_path):
    ramp = (np.linspace(0, 65535, 96 * 96).reshape(96, 96)).astype(np.uint16)
    path = save(Image.fromarray(ramp), tmp_path / "deep.png")
    view = app.analyse(path, "tiny", models=ONE_MODEL).explanation.view
    assert view.min() < 30 and view.max() > 220  # the full 16-bit range became the full 8-bit range


def test_palette_png_is_accepted(app, tmp_path):
    path = save(scene().convert("P", palette=Image.Palette.ADAPTIVE, colors=16), tmp_path / "palette.png")
    assert page(app, path, models=ONE_MODEL)["status"].startswith(DONE)


def test_transparent_png_is_composited_on_white(app, tmp_path):
    path = save(Image.new("RGBA", (80, 80), (0, 0, 0, 0)), tmp_path / "clear.png")
    assert (app.analyse(path, "tiny", models=ONE_MODEL).explanation.view == 255).all()


def test_greyscale_png_is_accepted_as_grey(app, tmp_path):
    path = save(scene().convert("L"), tmp_path / "grey.png")
    view = app.analyse(path, "tiny", models=ONE_MODEL).explanation.view
    assert (view[..., 0] == view[..., 1]).all() and (view[..., 1] == view[..., 2]).all()


def test_exif_orientation_is_honoured(app, tmp_path):
    pixels = np.zeros((64, 128, 3), np.uint8)
    pixels[:, :64] = (255, 0, 0)  # left half red, right half blue as stored
    pixels[:, 64:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the left half ends up on top
    path = save(Image.fromarray(pixels), tmp_path / "rotated.jpg", exif=exif, quality=95)
    view = app.analyse(path, "tiny", models=ONE_MODEL).explanation.view.astype(int)
    top, bottom = view[:16], view[-16:]
    assert top[..., 0].mean() > 200 and top[..., 2].mean() < 60
    assert bottom[..., 2].mean() > 200 and bottom[..., 0].mean() < 60


# ----------------------------------------------------------------------------- bad requests


def test_not_an_image_gets_a_clear_message(app, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are notes, not pixels")
    assert_cleared_with_message(page(app, path), "not an image file")


def test_truncated_png_gets_a_clear_message(app, tmp_path):
    whole = save(scene((200, 200)), tmp_path / "whole.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(whole[: len(whole) // 2])
    assert_cleared_with_message(page(app, path), "truncated or corrupt")


def test_zero_bytes_get_a_clear_message(app, tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert_cleared_with_message(page(app, path), "empty (0 bytes)")


def test_huge_dimensions_are_refused_before_decoding(app, tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming_size(10_000, 8_000))  # 80 megapixels: over attnviz's limit, under Pillow's
    assert_cleared_with_message(page(app, path), "megapixels")


def test_decompression_bomb_is_refused_before_decoding(app, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming_size(40_000, 40_000))  # 1.6 gigapixels in a few hundred bytes
    assert_cleared_with_message(page(app, path), "too many pixels")


def test_image_under_32_pixels_gets_a_clear_message(app, tmp_path):
    path = save(Image.new("RGB", (31, 200), (10, 20, 30)), tmp_path / "thin.png")
    assert_cleared_with_message(page(app, path), "too small")


def test_no_image_gets_a_clear_message(app):
    assert_cleared_with_message(page(app, None), "no image yet")


def test_unknown_target_class_gets_a_clear_message(app, tmp_path):
    out = page(app, save(scene(), tmp_path / "scene.png"), target="unicorn")
    assert_cleared_with_message(out, "'unicorn' is not a class of this set")


def test_no_model_chosen_gets_a_clear_message(app, tmp_path):
    assert_cleared_with_message(page(app, save(scene(), tmp_path / "scene.png"), models=[]), "no model chosen")


@pytest.mark.slow
def test_request_after_a_bad_upload_shows_only_its_own_results(app, tmp_path, tiny_weights_dir):
    first = page(app, save(scene(seed=1), tmp_path / "first.png"), models=["cbam"])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    page(app, empty)
    second_path = save(scene(seed=2), tmp_path / "second.png")
    second = page(app, second_path, models=["cbam"])
    assert second["status"].startswith(DONE)
    assert download(app, second) != download(app, first)
    with zipfile.ZipFile(download(app, second)) as archive:
        heatmaps = np.load(archive.open("heatmaps.npz"))
        np.testing.assert_array_equal(heatmaps["view"], view_of(second_path, tiny_weights_dir))
    np.testing.assert_array_equal(pixels(second["cbam_overlay"]),
                                  overlay(view_of(second_path, tiny_weights_dir), heatmaps["cbam"], "jet", 0.5))
    assert not np.array_equal(pixels(second["cbam_overlay"]), pixels(first["cbam_overlay"]))
    assert Path(second["cbam_overlay"]).parent != Path(first["cbam_overlay"]).parent  # each request its own files


def test_uploaded_image_passes_the_file_through_untouched(tmp_path):
    from gradio.data_classes import ImageData

    path = tmp_path / "notes.png"
    path.write_text("not an image: gradio must not try to open it")
    component = ui.uploaded_image(render=False)
    assert component.preprocess(ImageData(path=str(path), orig_name="notes.png")) == str(path)
    assert component.get_block_name() == "image"


# ----------------------------------------------------------------------------- text


def test_error_text_puts_the_headline_of_the_errors_code_before_the_library_line():
    text = ui.error_text(AttnvizError("cat.png: the file is empty (0 bytes); choose an image file", code="empty"))
    assert text.startswith(ui.t("err_empty")) and text.endswith("choose an image file")
    # found by the code, not by the wording: a reworded message keeps its headline
    assert ui.error_text(AttnvizError("nothing in it", code="empty")).startswith(ui.t("err_empty"))
    assert ui.error_text(AttnvizError("the file is empty")).startswith(ui.t("err_generic"))


def test_every_error_code_has_a_headline_in_every_language():
    for language in LANGUAGES:
        assert all(locale(language).get(f"err_{code}") for code in ERROR_CODES), language
    with pytest.raises(ValueError, match="unknown error code"):
        AttnvizError("x", code="no_such_code")


def _png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng([width, height]).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: load_image(b""), "empty"),
        (lambda: load_image(b"not an image at all"), "not_image"),
        (lambda: load_image(_png_bytes(8, 8)), "too_small"),
        (lambda: load_image(_png_bytes(64, 64)[: len(_png_bytes(64, 64)) // 2]), "corrupt"),
        (lambda: load_image(_png_bytes(64, 64), max_bytes=10), "file_too_big"),
        (lambda: ExplainSettings(method="no-such-cam").validate(["cat", "dog"]), "choice"),
    ],
)
def test_errors_a_user_causes_carry_their_code(make, code):
    with pytest.raises(AttnvizError) as caught:
        make()
    assert caught.value.code == code


def test_every_text_has_english_and_simplified_chinese():
    assert set(locale("en")) == set(locale("zh-CN"))
    assert all(locale("zh-CN")[key] for key in locale("en"))
    assert set(ui.TRANSLATIONS["en"]) == set(locale("en"))
    assert not any("{" + name + "}" in text for texts in ui.TRANSLATIONS.values() for text in texts.values()
                   for name in ("time_limit_s", "import_commands", "minutes"))  # every setting filled in


def test_no_model_set_installed_is_one_clear_error(tmp_path):
    with pytest.raises(AttnvizError, match="no model set is installed"):
        ui.AttnvizApp(tmp_path)


def test_precision_choice_reaches_explain(app, tmp_path):
    out = page(app, save(scene(), tmp_path / "scene.png"), models=ONE_MODEL, precision="bf16")
    assert out["status"].startswith(DONE) and out["last"].explanation.settings.precision == "bf16"
    assert_cleared_with_message(page(app, save(scene(), tmp_path / "scene.png"), precision="fp8"), "precision")


# ----------------------------------------------------------------------------- showing a result again


@pytest.fixture
def model_runs(app, monkeypatch) -> list:
    """Every run of the tiny set's models through the page, recorded as it happens."""
    explainer = app.explainer("tiny")
    runs: list = []
    original = explainer.explain

    def explain(*args, **kwargs):
        runs.append(args[1])  # the settings
        return original(*args, **kwargs)

    monkeypatch.setattr(explainer, "explain", explain)
    return runs


def test_explain_with_unchanged_inputs_shows_the_result_on_show_without_running_the_models(app, tmp_path,
                                                                                            model_runs):
    path = save(scene(), tmp_path / "scene.png")
    uploaded = page(app, path, models=ONE_MODEL)  # the upload event
    clicked = page(app, path, models=ONE_MODEL, last=uploaded["last"])  # then a click on Explain
    assert len(model_runs) == 1
    assert clicked["last"] is uploaded["last"]
    assert clicked["resnet50_overlay"] == uploaded["resnet50_overlay"]
    assert clicked["status"].startswith(ui.t("done_again"))


@pytest.mark.parametrize("change", [{"layer": "layer3"}, {"method": "eigencam"}, {"target": "triangle"},
                                    {"models": ["se"]}, {"eigen_smooth": True}, {"aug_smooth": True},
                                    {"precision": "bf16"}, {"knockout": "layer4"}, {"image": "other"}],
                         ids=lambda change: next(iter(change)))
def test_any_changed_model_setting_or_image_runs_the_models_again(app, tmp_path, model_runs, change):
    path = save(scene(), tmp_path / "scene.png")
    first = page(app, path, models=ONE_MODEL)
    if change.get("image"):
        path, change = save(scene(seed=3), tmp_path / "other.png"), {}
    second = page(app, path, **{"models": ONE_MODEL, **change}, last=first["last"])
    assert len(model_runs) == 2
    assert second["status"].startswith(DONE) and second["last"] is not first["last"]


def test_a_changed_opacity_or_colormap_redraws_without_running_the_models(app, tmp_path, model_runs,
                                                                          tiny_weights_dir):
    path = save(scene(), tmp_path / "scene.png")
    first = page(app, path, models=ONE_MODEL)
    redrawn = page(app, path, models=ONE_MODEL, opacity=1.0, colormap="viridis", last=first["last"])
    assert len(model_runs) == 1
    assert redrawn["status"].startswith(ui.t("done_redrawn"))
    heatmap = first["last"].explanation.results["resnet50"].heatmap
    np.testing.assert_array_equal(pixels(redrawn["resnet50_overlay"]),
                                  overlay(view_of(path, tiny_weights_dir), heatmap, "viridis", 1.0))
    again = page(app, path, models=ONE_MODEL, opacity=1.0, colormap="viridis", last=redrawn["last"])
    assert len(model_runs) == 1 and again["status"].startswith(ui.t("done_again"))


def test_a_result_whose_files_were_cleaned_up_is_shown_from_new_files(app, tmp_path, model_runs):
    import shutil

    path = save(scene(), tmp_path / "scene.png")
    first = page(app, path, models=ONE_MODEL)
    shutil.rmtree(first["last"].folder)
    again = page(app, path, models=ONE_MODEL, last=first["last"])
    assert len(model_runs) == 1 and Path(again["resnet50_overlay"]).is_file()


def test_after_an_error_the_same_request_runs_again(app, tmp_path, model_runs):
    path = save(scene(), tmp_path / "scene.png")
    failed = page(app, path, models=ONE_MODEL, target="unicorn")
    assert failed["last"] is None
    assert page(app, path, models=ONE_MODEL, last=failed["last"])["status"].startswith(DONE)


def test_precision_is_not_hidden_in_the_smoothing_accordion(app):
    block = app.components["precision"]
    while block is not None:
        assert not isinstance(block, gr.Accordion)
        block = block.parent


# ----------------------------------------------------------------------------- the attention lab


def test_knockout_shows_each_model_with_the_gates_off_beside_its_trained_answer(app, tmp_path):
    out = page(app, save(scene(), tmp_path / "scene.png"), knockout="layer4.*:channel", knockout_value="identity")
    assert out["status"].startswith(DONE)
    for variant in ("se", "cbam", "eca"):
        assert out[f"{variant}_knockout_column"].visible is True
        assert "layer4.*:channel" in out[f"{variant}_knockout_info"] and "3 gates" in out[f"{variant}_knockout_info"]
        assert pixels(out[f"{variant}_knockout_overlay"]).shape == (64, 64, 3)
        assert pixels(out[f"{variant}_knockout_difference"]).shape == (64, 64, 3)
        assert abs(sum(out[f"{variant}_knockout_top"].values()) - 1) < 1e-4
    assert out["resnet50_knockout_column"].visible is True
    assert "knockout_unaffected" in str(out["resnet50_knockout_info"]) and out["resnet50_knockout_overlay"] is None
    knocked = out["last"].explanation.results["cbam"].knockout
    assert knocked.gates == ["layer4.0:channel", "layer4.1:channel", "layer4.2:channel"]


def test_without_knockout_the_columns_with_the_gates_off_stay_hidden(app, tmp_path):
    out = page(app, save(scene(), tmp_path / "scene.png"), models=["cbam"])
    assert out["cbam_knockout_column"].visible is False and out["cbam_knockout_overlay"] is None


def test_a_bad_knockout_spec_is_one_clear_message(app, tmp_path):
    out = page(app, save(scene(), tmp_path / "scene.png"), knockout="layer9:channel")
    assert_cleared_with_message(out, "knock-out 'layer9:channel' is not valid")


def test_excitation_of_a_set_without_an_analysis_says_how_to_make_it(app, tmp_path):
    out = page(app, save(scene(), tmp_path / "scene.png"), models=["se", "resnet50"], excitation_block="layer4.1")
    assert out["se_excitation_column"].visible is True and out["se_excitation"] is None
    assert "excitation_missing" in str(out["se_excitation_note"])
    assert "resnet50_excitation_column" not in out  # no channel attention: no such figure


def test_excitation_draws_this_images_weights_over_the_stored_class_means(app, tmp_path, monkeypatch, model_runs):
    from attnviz import lab_ui

    profile = {"classes": {name: [0.3] * 8 for name in app.classes("tiny")}, "all": [0.3] * 8}
    monkeypatch.setitem(lab_ui._PROFILES, (str(app.weights_dir), "tiny"), {"eca": {"layer4.1": profile}})
    path = save(scene(), tmp_path / "scene.png")
    first = page(app, path, models=["eca"])
    shown = page(app, path, models=["eca"], excitation_block="layer4.1", last=first["last"])
    assert len(model_runs) == 1  # choosing a block only draws
    assert pixels(shown["eca_excitation"]).ndim == 3 and shown["eca_excitation_note"] == ""


def test_the_endpoint_draws_the_excitation_of_a_block_and_says_when_the_set_has_none(app, tmp_path, monkeypatch):
    from attnviz import lab_ui

    path = str(save(scene(), tmp_path / "scene.png"))
    api = ("tiny", ["se", "resnet50"], "gradcam", ui.OWN_TOP1, "layer4", 0.5, "jet", False, False, "fp32", False, "",
           "identity")
    with pytest.raises(gr.Error, match="no excitation profile of layer4.1 for se"):
        app.explain_api(path, *api, "layer4.1", progress=None)
    profile = {"classes": {name: [0.3] * 8 for name in app.classes("tiny")}, "all": [0.3] * 8}
    monkeypatch.setitem(lab_ui._PROFILES, (str(app.weights_dir), "tiny"), {"se": {"layer4.1": profile}})
    _, images, _ = app.explain_api(path, *api, "layer4.1", progress=None)
    assert images[-1][1] == "se: ResNet50 + SE, excitation of layer4.1" and pixels(images[-1][0]).ndim == 3
