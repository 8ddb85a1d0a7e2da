"""The analysis end to end on tiny random sets trained on nothing: the CLI, its files, and the app's Analysis tab."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import make_model_set
from model_state import tensors_kept_on
from PIL import Image

from attnviz.analysis import cli as analysis_cli
from attnviz.analysis import config as analysis_config
from attnviz.analysis import items as analysis_items
from attnviz.analysis import plots as analysis_plots
from attnviz.analysis import report as analysis_report
from attnviz.analysis import run as analysis_run
from attnviz.analysis import stats as analysis_stats
from attnviz.analysis.plots import DISPLAY_WIDTH_PX, PIXEL_SCALE
from attnviz.analysis_view import build_analysis_tab
from attnviz.attention import family
from attnviz.errors import AttnvizError
from attnviz.models import TARGET_LAYERS, VARIANTS
from attnviz.scenes import CLASSES
from attnviz.texts import locale
from attnviz.weights import load_model_set

LAYER4_METHODS = list(analysis_config.DEFAULT_METHODS)


@pytest.fixture(scope="module")
def scenes_weights_dir(tmp_path_factory) -> Path:
    """Three random ResNet50s that know the scene classes, at 64 px."""
    return make_model_set(tmp_path_factory.mktemp("scene-weights"), "scenes", classes=CLASSES, crop=64)


@pytest.fixture(scope="module")
def quick_run(scenes_weights_dir):
    """``python -m attnviz.analyze --quick`` once on the tiny set; the tests read what it wrote (beside the
    set's analysis/, which a quick run leaves alone)."""
    code = analysis_cli.main(["--set", "scenes", "--weights-dir", str(scenes_weights_dir), "--quick", "--quiet"])
    out = scenes_weights_dir / "scenes" / analysis_config.QUICK_DIR
    return code, out, json.loads((out / analysis_config.JSON_NAME).read_text())


def intervals(node):
    """Every {mean, low, high} in a result."""
    if isinstance(node, dict):
        if {"mean", "low", "high"} <= set(node):
            yield node
        else:
            for value in node.values():
                yield from intervals(value)
    elif isinstance(node, list):
        for value in node:
            yield from intervals(value)


# --------------------------------------------------------------------------- the command


@pytest.mark.slow
def test_quick_run_writes_json_markdown_and_every_plot(quick_run):
    code, out, result = quick_run
    assert code == 0
    files = {p.name for p in out.iterdir()}
    names = {analysis_config.JSON_NAME, analysis_config.MARKDOWN_NAME}
    assert names | set(analysis_config.plot_files(result).values()) <= files
    assert sorted(result["plots"]) == sorted(analysis_config.plot_files(result).values())
    assert not (out.parent / analysis_config.ANALYSIS_DIR).exists()
    assert sum(p.stat().st_size for p in out.iterdir()) < 2 * 2**20


@pytest.mark.slow
def test_quick_run_records_how_it_was_made(quick_run):
    _, _, result = quick_run
    assert result["command"].startswith("python -m attnviz.analyze --set scenes")
    assert result["samples"] | {"val": 6, "test": 6, "unseen": 3, "pairs": 3, "faithfulness": 2} == result["samples"]
    assert result["variants"] == list(VARIANTS)
    assert result["threshold"]["value"] in result["threshold"]["grid"]
    assert result["timing"]["total_s"] > 0 and "test" in result["timing"]["phases_s"]
    assert result["versions"]["torch"] == torch.__version__
    assert result["machine"]["cores"] >= 1


@pytest.mark.slow
def test_quick_run_measures_every_method_at_layer4_and_gradcam_at_every_layer(quick_run):
    _, _, result = quick_run
    expected = {f"{m}@layer4" for m in LAYER4_METHODS} | {f"gradcam@{layer}" for layer in TARGET_LAYERS}
    expected.add(f"{analysis_config.BASELINE}@layer4")  # the baseline, for localisation only
    for split in ("test", "unseen"):
        for metric in analysis_config.LOCALISATION:
            assert set(result["localisation"][split][metric]) == expected
    assert result["localisation"]["test"]["pointing"]["gradcam@layer4"]["n"] == 6
    assert result["pairs"]["energy_other"]["gradcam@layer4"]["n"] == 3  # scenes, not CAMs
    # deletion / insertion for every method, ROAD for Grad-CAM (the default)
    for metric in analysis_config.FAITHFULNESS:
        methods = LAYER4_METHODS if metric in ("deletion", "insertion") else ("gradcam",)
        assert set(result["faithfulness"][metric]) == {f"{m}@layer4" for m in methods}
        assert result["faithfulness"][metric]["gradcam@layer4"]["n"] == 2
    curve = result["faithfulness"]["curves"]["gradcam@layer4"]["cbam"]["deletion"]
    assert len(curve) == analysis_config.QUICK["steps"] + 1


@pytest.mark.slow
def test_quick_run_values_are_in_range_with_intervals_around_their_means(quick_run):
    _, _, result = quick_run
    for iv in intervals(result):
        if iv["mean"] is not None:
            assert iv["low"] - 1e-9 <= iv["mean"] <= iv["high"] + 1e-9
    for metric in ("pointing", "energy", "iou"):
        for group in result["localisation"]["test"][metric].values():
            for iv in group["models"].values():
                assert 0 <= iv["low"] <= iv["high"] <= 1
    differences = result["localisation"]["test"]["energy"]["gradcam@layer4"]["differences"]
    pairs = [(a, b) for i, a in enumerate(VARIANTS) for b in VARIANTS[i + 1 :]]
    assert set(differences) == {f"{b}-{a}" for a, b in pairs} and "cbam-se" in differences


@pytest.mark.slow
def test_quick_run_reads_out_every_channel_and_spatial_gate(quick_run):
    from attnviz.attention import family

    _, _, result = quick_run
    assert set(result["excitation"]) == {v for v in VARIANTS if "channel" in family(v).kinds()} >= {"se", "cbam"}
    assert set(result["spatial"]) == {v for v in VARIANTS if "spatial" in family(v).kinds()} >= {"cbam"}
    se = result["excitation"]["se"]
    assert len(se["blocks"]) == 16 and se["channels"][0] == 256 and se["channels"][-1] == 2048
    assert list(se["profiles"]) == ["layer1.2", "layer2.3", "layer3.5", "layer4.0", "layer4.1", "layer4.2"]
    assert all(0 <= v <= 1 for v in se["class_specificity"])
    spatial = result["spatial"]["cbam"]
    assert len(spatial["blocks"]) == 16
    for energy, chance in zip(spatial["energy"], spatial["chance"], strict=True):
        assert 0 <= energy["mean"] <= 1 and 0 < chance["mean"] < 1


@pytest.mark.slow
def test_markdown_report_states_command_sample_and_tables(quick_run):
    _, out, result = quick_run
    text = (out / analysis_config.MARKDOWN_NAME).read_text()
    assert result["command"] in text
    assert "6 test" in text and "Summary: test scenes, Grad-CAM at layer4" in text
    assert "| Grad-CAM (layer1) |" in text and "CBAM − SE" in text
    assert "## Excitation" in text and "## ResNet50 + CBAM: spatial attention" in text


@pytest.mark.slow
def test_report_says_which_methods_gave_the_same_maps(quick_run):
    """At layer4 of a ResNet the logit's gradient is uniform over positions: Grad-CAM, XGrad-CAM and HiResCAM
    coincide; the report finds that in the numbers, and a single differing number splits the group."""
    import copy

    _, out, result = quick_run
    groups = analysis_report.coinciding_methods(result)
    assert ["Grad-CAM", "XGrad-CAM", "HiResCAM"] in groups
    assert all("LayerCAM" not in g and "EigenCAM" not in g for g in groups)
    assert "**Same maps**: Grad-CAM, XGrad-CAM and HiResCAM" in (out / analysis_config.MARKDOWN_NAME).read_text()
    changed = copy.deepcopy(result)
    changed["localisation"]["unseen"]["iou"]["hirescam@layer4"]["models"]["se"]["mean"] += 0.01
    assert ["Grad-CAM", "XGrad-CAM"] in analysis_report.coinciding_methods(changed)
    assert not any("HiResCAM" in g for g in analysis_report.coinciding_methods(changed))


@pytest.mark.slow
def test_plots_are_modest_pngs_of_one_width(quick_run):
    _, out, result = quick_run
    for name in analysis_config.plot_files(result).values():
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            assert image.width == DISPLAY_WIDTH_PX * PIXEL_SCALE and 400 <= image.height <= 1600
        assert (out / name).stat().st_size < 300_000


@pytest.mark.slow
def test_report_only_rewrites_the_same_markdown_from_the_json(quick_run):
    _, out, _ = quick_run
    before = (out / analysis_config.MARKDOWN_NAME).read_text()
    (out / analysis_config.MARKDOWN_NAME).unlink()
    (out / "spatial.png").unlink()
    assert analysis_cli.main(["--report-only", "--out", str(out)]) == 0
    assert (out / analysis_config.MARKDOWN_NAME).read_text() == before
    assert (out / "spatial.png").is_file()


def test_refuses_a_set_that_does_not_know_the_scene_classes(tiny_weights_dir, capsys):
    assert analysis_cli.main(["--set", "tiny", "--weights-dir", str(tiny_weights_dir), "--quick"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: model set 'tiny' has other classes") and "\n" not in error


def test_refuses_a_model_the_set_lacks(tmp_path, capsys):
    weights = make_model_set(tmp_path, "plain", classes=CLASSES, crop=32, variants=("resnet50",))
    assert analysis_cli.main(["--set", "plain", "--weights-dir", str(weights), "--models", "cbam"]) == 2
    assert "has no model 'cbam'; it has resnet50" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"faithfulness": 10, "test": 5}, "at most --test"),
        ({"methods": ("scorecam",)}, "own --scorecam"),
        ({"val": 0}, "--threshold"),
        ({"steps": 1}, "--steps"),
        ({"layers": ("layer5",)}, "unknown layer"),
        ({"methods": ("gradcam",), "road_methods": ("layercam",)}, "--road-methods must be among --methods"),
    ],
)
def test_config_refuses_settings_it_cannot_run(options, message):
    with pytest.raises(AttnvizError, match=message):
        analysis_config.AnalysisConfig(**options).validate()


def test_quick_sizes_give_way_to_explicit_options():
    args = analysis_cli._parser().parse_args(["--quick", "--test", "9", "--methods", "gradcam", "eigencam"])
    config = analysis_cli.config_from_args(args)
    assert (config.test, config.val, config.steps, config.workers) == (9, analysis_config.QUICK["val"], 4, 0)
    assert config.methods == ("gradcam", "eigencam")


def test_scene_items_put_masks_on_the_pixels_the_model_sees():
    from attnviz.weights import Preprocessing

    (single,) = analysis_items.scene_items("test", 3, CLASSES, Preprocessing(resize=64, crop=64))
    assert single.tensor.shape == (3, 64, 64) and single.own.shape == (64, 64)
    assert CLASSES[single.target] == CLASSES[3 % len(CLASSES)]
    assert single.other is None and single.own.any()
    first, second = analysis_items.scene_items("pairs", 0, CLASSES, Preprocessing(resize=64, crop=64))
    assert first.target != second.target
    assert np.array_equal(first.own, second.other) and np.array_equal(first.other, second.own)
    assert first.own_distance[first.own].max() == 0


def test_run_leaves_no_hook_no_record_and_no_gradient_behind(scenes_weights_dir):
    model_set = load_model_set("scenes", scenes_weights_dir, variants=["cbam"])
    model = model_set.models["cbam"]
    config = analysis_config.AnalysisConfig(
        val=0,
        threshold=0.5,
        test=1,
        unseen=0,
        pairs=1,
        faithfulness=1,
        scorecam=0,
        methods=("gradcam",),
        layers=("layer3", "layer4"),
        steps=2,
        road_percentiles=(50,),
        resamples=20,
        workers=0,
        knockout_scenes=1,  # the sections too: the knock-out's gate replacements, the sanity test's copy
        sanity_scenes=1,
    )
    result = analysis_run.run_analysis(model_set, config, progress=False)
    assert result["faithfulness"]["deletion"]["gradcam@layer4"]["n"] == 1
    assert result["knockout"]["models"]["cbam"] and result["sanity"]["models"]["cbam"]["verdict"]
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert tensors_kept_on(model) == []
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())
    assert not model.training


@pytest.fixture(scope="module")
def scorecam_run(tmp_path_factory):
    """Score-CAM and ROAD in a worker process, on one model at 32 px (layer4 is then one cell)."""
    weights = make_model_set(
        tmp_path_factory.mktemp("one-model"), "one", classes=CLASSES, crop=32, variants=("resnet50",)
    )
    out = weights / "report"
    code = analysis_cli.main(
        [
            "--set",
            "one",
            "--weights-dir",
            str(weights),
            "--out",
            str(out),
            "--quiet",
            "--val",
            "2",
            "--test",
            "1",
            "--unseen",
            "0",
            "--pairs",
            "0",
            "--faithfulness",
            "1",
            "--scorecam",
            "1",
            "--methods",
            "gradcam",
            "--layers",
            "layer4",
            "--steps",
            "2",
            "--road-percentiles",
            "50",
            "--resamples",
            "20",
            "--workers",
            "1",
            "--sanity-scenes",  # a section's 37 passes a scene: not what these tests are about
            "0",
        ]
    )
    return code, json.loads((out / analysis_config.JSON_NAME).read_text())


@pytest.mark.slow
def test_scorecam_runs_on_its_subset_beside_gradcam(scorecam_run):
    code, result = scorecam_run
    assert code == 0
    assert set(result["scorecam"]["pointing"]) == {"scorecam@layer4", "gradcam@layer4"}
    assert result["scorecam"]["energy"]["scorecam@layer4"]["n"] == 1


@pytest.mark.slow
def test_road_runs_in_worker_processes(scorecam_run):
    _, result = scorecam_run
    assert result["config"]["workers"] == 1
    assert result["faithfulness"]["road_combined"]["gradcam@layer4"]["models"]["resnet50"]["mean"] is not None


# --------------------------------------------------------------------------- the Analysis tab


@pytest.mark.slow
def test_analysis_tab_shows_summary_plots_tables_and_command(quick_run, scenes_weights_dir):
    _, out, result = quick_run
    shutil.copytree(out, scenes_weights_dir / "scenes" / analysis_config.ANALYSIS_DIR, dirs_exist_ok=True)
    with gr.Blocks() as demo:
        with gr.Tab("Analysis"):
            shown = build_analysis_tab(scenes_weights_dir, "scenes")
    assert set(shown["plots"]) == set(analysis_config.plot_files(result))
    assert "pointing game" in shown["summary"].value
    assert "python -m attnviz.analyze --set scenes" in shown["command"].value
    assert "## Two-object scenes" in shown["tables"].value
    props = {c["id"]: c["props"] for c in demo.get_config_file()["components"]}  # the page can be served
    assert props[shown["plots"]["spatial"]._id]["value"]["path"].endswith(".png")


def test_analysis_tab_says_how_to_make_a_missing_analysis(tmp_path):
    with gr.Blocks():
        with gr.Tab("Analysis"):
            shown = build_analysis_tab(tmp_path, "fresh")
    line = shown["status"].value
    assert "No analysis" in line and f"python -m attnviz.analyze --set fresh --weights-dir {tmp_path}" in line
    assert "\n" not in line.strip() and not shown["plots"]


def test_analysis_tab_says_an_imported_set_cannot_be_measured_and_what_it_would_need(tmp_path):
    from conftest import make_model_set

    classes = ["tench", "goldfish", "great white shark", "tiger shark"]
    make_model_set(tmp_path, "imported", classes=classes, variants=("resnet50",))
    with gr.Blocks():
        shown = build_analysis_tab(tmp_path, "imported")
    line = shown["status"].value
    assert "other classes than the generated scenes" in line and "a mask of the object" in line
    assert "(4: tench, goldfish, great white shark, …)" in line
    out = shlex.quote(str(tmp_path / "imported" / analysis_config.ANALYSIS_DIR))
    command = f"python -m attnviz.analyze --set imported --weights-dir {shlex.quote(str(tmp_path))}"
    assert f"`{command} --images DIR --masks DIR --out {out}`" in line  # its results then show in this tab
    assert not shown["plots"]


def test_analysis_tab_names_no_weights_folder_for_the_default_one():
    from attnviz.analysis_view import _command
    from attnviz.weights import default_weights_dir

    assert _command(default_weights_dir(), "builtin") == "python -m attnviz.analyze --set builtin"
    assert _command(None, "builtin") == "python -m attnviz.analyze --set builtin"


def test_analysis_tab_passes_its_texts_through_the_given_translation(tmp_path):
    with gr.Blocks():
        shown = build_analysis_tab(tmp_path, "fresh", translate=lambda key: f"<{key}>")
    assert shown["status"].value.startswith("<analysis_missing>")


def test_analysis_translations_cover_the_same_keys_in_every_language():
    english = {key for key in locale("en") if key.startswith("analysis_")}
    assert english == {key for key in locale("zh-CN") if key.startswith("analysis_")}
    fixed = (*analysis_config.PLOTS_BEFORE_EXCITATION, *analysis_config.PLOTS_AFTER_EXCITATION)
    assert {f"analysis_{name}" for name in fixed} | {"analysis_excitation"} <= english


def test_class_specificity_is_one_for_weights_set_by_the_class_and_zero_for_weights_it_does_not_explain():
    stats = analysis_stats.ExcitationStats(classes=2)
    targets = np.array([0, 0, 1, 1])
    stats.add(
        {
            "by_class": np.array([[0.2, 0.5], [0.2, 0.5], [0.8, 0.5], [0.8, 0.5]]),
            "by_image": np.array([[0.2], [0.8], [0.2], [0.8]]),
        },
        targets,
    )
    summary = stats.summary(["a", "b"], profile_blocks=["by_class"])
    assert summary["class_specificity"] == pytest.approx([1.0, 0.0])
    assert summary["spread"] == pytest.approx([0.15, 0.0])  # std across classes 0.3 and 0, averaged
    assert summary["mean"] == pytest.approx([0.5, 0.5])
    assert summary["chance_specificity"] == pytest.approx(1 / 3)  # (classes - 1) / (images - 1)
    assert summary["profiles"]["by_class"]["classes"]["b"] == pytest.approx([0.8, 0.5])


def test_profile_blocks_are_the_se_papers_last_block_of_each_stage_and_all_of_the_last():
    blocks = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer4.0", "layer4.1"]
    assert analysis_stats.profile_blocks(blocks) == ["layer1.1", "layer2.1", "layer3.0", "layer4.0", "layer4.1"]


def test_road_methods_follow_the_methods_asked_for():
    parser = analysis_cli._parser()
    assert analysis_cli.config_from_args(parser.parse_args([])).road_methods == ("gradcam",)
    assert analysis_cli.config_from_args(parser.parse_args(["--methods", "layercam", "eigencam"])).road_methods == (
        "layercam",)
    chosen = analysis_cli.config_from_args(parser.parse_args(["--methods", "gradcam", "layercam", "--road-methods",
                                                         "layercam"]))
    assert chosen.road_methods == ("layercam",)


# --------------------------------------------------------------------------- where a run writes

TINY_RUN = ["--quiet", "--val", "1", "--test", "1", "--unseen", "0", "--pairs", "0", "--faithfulness", "0",
            "--methods", "gradcam", "--layers", "layer4", "--resamples", "20", "--workers", "0", "--scorecam", "0",
            "--knockout-scenes", "0", "--sanity-scenes", "0"]  # where the report goes, not what it measures


@pytest.fixture
def one_model_set(tmp_path) -> Path:
    """A one-model set at 32 px whose analysis/ holds results a small run must not replace."""
    weights = make_model_set(tmp_path, "one", classes=CLASSES, crop=32, variants=("resnet50",))
    shipped = weights / "one" / analysis_config.ANALYSIS_DIR
    shipped.mkdir()
    (shipped / analysis_config.JSON_NAME).write_text('{"shipped": true}\n')
    return weights


def test_a_quick_run_writes_beside_the_shipped_analysis_and_says_where(one_model_set, capsys):
    code = analysis_cli.main(["--set", "one", "--weights-dir", str(one_model_set), "--quick", *TINY_RUN])
    assert code == 0
    shipped = one_model_set / "one" / analysis_config.ANALYSIS_DIR
    assert (shipped / analysis_config.JSON_NAME).read_text() == '{"shipped": true}\n'
    assert sorted(p.name for p in shipped.iterdir()) == [analysis_config.JSON_NAME]
    quick = one_model_set / "one" / analysis_config.QUICK_DIR
    assert json.loads((quick / analysis_config.JSON_NAME).read_text())["samples"]["test"] == 1
    printed = capsys.readouterr().out
    assert f"files to {quick} in" in printed
    assert f"{shipped} (what the app shows) is untouched; give --out {shipped} to replace it" in printed


def test_a_run_smaller_than_the_default_goes_to_analysis_partial_and_out_names_the_shipped_folder(one_model_set):
    shipped = one_model_set / "one" / analysis_config.ANALYSIS_DIR
    assert analysis_cli.main(["--set", "one", "--weights-dir", str(one_model_set), *TINY_RUN]) == 0
    assert (one_model_set / "one" / analysis_config.PARTIAL_DIR / analysis_config.JSON_NAME).is_file()
    assert (shipped / analysis_config.JSON_NAME).read_text() == '{"shipped": true}\n'
    argv = ["--set", "one", "--weights-dir", str(one_model_set), *TINY_RUN, "--out", str(shipped)]
    assert analysis_cli.main(argv) == 0
    assert json.loads((shipped / analysis_config.JSON_NAME).read_text())["set"] == "one"


@pytest.mark.parametrize(
    ("options", "less"),
    [
        ([], False),
        (["--scorecam", "24", "--test", "500"], False),  # more than the default may replace it
        (["--seed", "3", "--workers", "0", "--batch-size", "4"], False),
        (["--test", "399"], True),
        (["--resamples", "1000"], True),
        (["--methods", "gradcam", "layercam"], True),
        (["--layers", "layer4"], True),
        (["--road-percentiles", "50"], True),
        (["--models", "resnet50", "se"], True),
    ],
)
def test_a_run_measures_less_than_the_default_when_any_sample_method_layer_or_model_is_left_out(options, less):
    args = analysis_cli._parser().parse_args(options)
    assert analysis_cli.measures_less(analysis_cli.config_from_args(args), ["resnet50", "se", "cbam"]) is less


def test_report_only_follows_the_same_folder_choice(tmp_path):
    make_model_set(tmp_path, "plain", classes=CLASSES, crop=32, variants=("resnet50",))
    parse = analysis_cli._parser().parse_args
    folder = tmp_path / "plain"
    for options, expected in ((["--report-only"], folder / "analysis"),
                              (["--report-only", "--quick"], folder / analysis_config.QUICK_DIR),
                              (["--report-only", "--quick", "--out", str(tmp_path / "x")], tmp_path / "x")):
        args = parse(["--weights-dir", str(tmp_path), *options])
        assert analysis_cli.output_dir(args, analysis_cli.config_from_args(args), ["resnet50"]) == expected


# --------------------------------------------------------------------------- the plots, for the page

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "builtin" / "analysis"


def draw_shipped_plots(out: Path, monkeypatch) -> dict[str, list[tuple[str, float]]]:
    """Redraw every plot of the shipped analysis.json into ``out``; each PNG's visible texts and their sizes (pt)."""
    from matplotlib.text import Text

    out.mkdir(exist_ok=True)
    shutil.copy(SHIPPED / analysis_config.JSON_NAME, out / analysis_config.JSON_NAME)
    texts: dict[str, list[tuple[str, float]]] = {}
    save = analysis_plots._save

    def recording_save(fig, path):
        texts[path.name] = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text)
                            if t.get_visible() and t.get_text().strip()]
        save(fig, path)

    monkeypatch.setattr(analysis_plots, "_save", recording_save)
    assert analysis_cli.main(["--report-only", "--out", str(out)]) == 0
    return texts


def smallest_on_page(texts: list[tuple[str, float]], png_width: int) -> tuple[float, str]:
    """The smallest text of a plot in px on the page: size in pt * PNG dpi / 72 * shown width / PNG width."""
    dpi = analysis_plots.DPI * PIXEL_SCALE
    size, text = min((pt * dpi / 72 * DISPLAY_WIDTH_PX / png_width, text) for text, pt in texts)
    return size, text


def test_every_plot_has_the_page_width_and_no_text_under_10_px_there(tmp_path, monkeypatch):
    out = tmp_path / "report"
    texts = draw_shipped_plots(out, monkeypatch)
    result = json.loads((out / analysis_config.JSON_NAME).read_text())
    assert sorted(texts) == sorted(result["plots"]) == sorted(analysis_config.plot_files(result).values())
    for name, found in texts.items():
        with Image.open(out / name) as image:
            assert image.width == DISPLAY_WIDTH_PX * PIXEL_SCALE, name
        assert len(found) > 10, name  # titles, labels, ticks and legend entries
        size, text = smallest_on_page(found, DISPLAY_WIDTH_PX * PIXEL_SCALE)
        assert size >= analysis_plots.MIN_TEXT_PX, (name, text, size)


def test_the_text_size_check_sees_tick_labels(tmp_path, monkeypatch):
    monkeypatch.setitem(analysis_plots.FONT_SIZES, "xtick.labelsize", 6)
    texts = draw_shipped_plots(tmp_path / "report", monkeypatch)
    size, text = smallest_on_page(texts["localisation.png"], DISPLAY_WIDTH_PX * PIXEL_SCALE)
    assert size < analysis_plots.MIN_TEXT_PX and "CAM" in text  # a method's name under its bars


# --------------------------------------------------------------------------- the knock-out section


@pytest.mark.slow
def test_quick_run_switches_each_stage_off_for_every_model_with_gates(quick_run):
    _, out, result = quick_run
    section = result["knockout"]
    gated = [v for v in result["variants"] if family(v).gates]
    assert list(section["models"]) == gated and section["stages"] == list(TARGET_LAYERS)
    assert section["scenes"] == analysis_config.QUICK["knockout_scenes"]
    assert section["value"] == "identity" and section["note"].startswith("no stored gate means")  # random models
    for model in section["models"].values():
        for measure in ("accuracy", "energy"):
            assert set(model[measure]["stages"]) == set(TARGET_LAYERS)
            for stage in model[measure]["stages"].values():
                change = stage["change"]
                assert change["low"] - 1e-9 <= change["mean"] <= change["high"] + 1e-9
    assert "## Switching each stage's attention off (identity)" in (out / analysis_config.MARKDOWN_NAME).read_text()
    assert (out / "knockout.png").is_file()


def test_sections_rerun_only_the_named_section_into_the_existing_analysis(scenes_weights_dir, tmp_path):
    out = tmp_path / "analysis"
    common = ["--set", "scenes", "--weights-dir", str(scenes_weights_dir), "--quiet", "--out", str(out)]
    assert analysis_cli.main([*common, "--sections", "knockout"]) == 2  # nothing to add a section to yet
    assert analysis_cli.main([*common, "--quick", "--knockout-scenes", "0", "--sanity-scenes", "0"]) == 0
    before = json.loads((out / analysis_config.JSON_NAME).read_text())
    assert before["knockout"]["scenes"] == 0
    assert analysis_cli.main([*common, "--sections", "knockout", "--knockout-scenes", "2", "--knockout-value",
                         "identity"]) == 0
    after = json.loads((out / analysis_config.JSON_NAME).read_text())
    assert after["knockout"]["scenes"] == 2 and after["knockout"]["value"] == "identity"
    assert after["localisation"] == before["localisation"] and after["accuracy"] == before["accuracy"]
    assert after["sanity"] == before["sanity"]  # the other section as it was
    assert "knockout" in after["timing"]["phases_s"]
