"""The Analysis tab's findings (plain sentences computed from analysis.json) and its layout, without a server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gradio as gr
import pytest

from attnviz.analysis import config as analysis_config
from attnviz.analysis import results as analysis_results
from attnviz.analysis.findings import findings, findings_markdown, language_of
from attnviz.analysis_view import build_analysis_tab
from attnviz.texts import locale

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "builtin" / "analysis"
VARIANTS = ["resnet50", "se", "cbam"]
TITLES = {"resnet50": "ResNet50", "se": "ResNet50 + SE", "cbam": "ResNet50 + CBAM"}


def comparison(means: dict[str, float], apart: set[str] = frozenset(), n: int = 100, half: float = 0.01) -> dict:
    """One metric's comparison: each model's mean with an interval of +-``half``, and every pairwise difference
    (later model minus earlier, as analysis.json keeps them), beyond noise for the pairs named in ``apart``."""
    models = {v: {"mean": m, "low": m - half, "high": m + half} for v, m in means.items()}
    differences = {}
    for i, a in enumerate(VARIANTS):
        for b in VARIANTS[i + 1 :]:
            d = means[b] - means[a]
            key = f"{b}-{a}"
            differences[key] = {"mean": d, "low": d - half, "high": d + half, "excludes_zero": key in apart}
    return {"n": n, "models": models, "differences": differences}


def made_up_result(**metrics: dict) -> dict:
    """A result with every metric the findings read; ``metrics`` replaces some comparisons."""
    same = comparison({"resnet50": 0.5, "se": 0.5, "cbam": 0.5})
    groups = {"accuracy": same, "unseen": same, "pointing": same, "energy": same, "iou": same,
              "deletion": same, "insertion": same, "road_combined": same, **metrics}
    return {
        "variants": VARIANTS,
        "titles": TITLES,
        "config": {"confidence": 0.95},
        "area_share": {"test": 0.07},
        "accuracy": {"test": groups["accuracy"], "unseen": groups["unseen"]},
        "localisation": {"test": {m: {"gradcam@layer4": groups[m]} for m in ("pointing", "energy", "iou")}},
        "faithfulness": {m: {"gradcam@layer4": groups[m]} for m in ("deletion", "insertion", "road_combined")},
    }


@pytest.fixture(scope="module")
def shipped() -> dict:
    return analysis_results.read_result(SHIPPED)


def test_the_most_accurate_model_is_named_with_its_interval_and_its_leads(shipped):
    first = findings(shipped)[0]
    assert first.startswith("**ResNet50 + CBAM** is the most accurate: top-1 accuracy 98.0 % [96.5, 99.2] on 400")
    assert "ahead of ResNet50 (+2.5 [0.5, 4.8]) and ResNet50 + SE (+2.0 [0.2, 3.8]) beyond noise" in first


def test_a_lead_whose_interval_includes_zero_is_called_within_noise():
    result = made_up_result(accuracy=comparison({"resnet50": 0.90, "se": 0.95, "cbam": 0.93}, apart={"se-resnet50"}))
    first = findings(result)[0]
    assert first.startswith("**ResNet50 + SE** is the most accurate: top-1 accuracy 95.0 % [94.0, 96.0]")
    assert "ahead of ResNet50 (+5.0 [4.0, 6.0]) beyond noise" in first
    assert "Its lead over ResNet50 + CBAM (+2.0 [1.0, 3.0]) is within noise" in first


def test_localisation_names_the_best_model_for_each_measure_and_a_saturated_pointing_game(shipped):
    text = " ".join(findings(shipped))
    assert "By energy in mask, **ResNet50 + SE**'s Grad-CAM finds the object best: 0.388 [0.372, 0.405]" in text
    assert "By mask IoU, **ResNet50**'s Grad-CAM finds the object best: 0.411 [0.397, 0.427]" in text
    assert "The pointing game cannot tell the models apart: 98.2–99.0 %" in text


def test_the_most_faithful_model_counts_deletion_as_lower_is_better():
    result = made_up_result(
        deletion=comparison({"resnet50": 0.20, "se": 0.15, "cbam": 0.10}, apart={"cbam-resnet50"}),
        insertion=comparison({"resnet50": 0.70, "se": 0.72, "cbam": 0.80}, apart={"cbam-resnet50", "cbam-se"}),
        road_combined=comparison({"resnet50": 0.40, "se": 0.45, "cbam": 0.41}),
    )
    (line,) = [s for s in findings(result) if "most faithful" in s]
    assert line.startswith("**ResNet50 + CBAM**'s Grad-CAM is the most faithful to its model: best on 2 of 3 "
                           "measures (deletion AUC and insertion AUC)")
    assert "deletion AUC against ResNet50 (-0.100 [-0.110, -0.090])" in line.split("Within noise")[0]
    assert "Within noise: deletion AUC against ResNet50 + SE (-0.050" in line


def test_attention_that_does_not_help_is_said_per_model_and_one_that_helps_everywhere_is_not():
    better_everywhere = comparison({"resnet50": 0.5, "se": 0.6, "cbam": 0.4}, apart={"se-resnet50", "cbam-resnet50"})
    result = made_up_result(**{m: better_everywhere for m in ("accuracy", "unseen", "pointing", "energy", "iou",
                                                               "insertion", "road_combined")},
                            deletion=comparison({"resnet50": 0.5, "se": 0.4, "cbam": 0.6},
                                                apart={"se-resnet50", "cbam-resnet50"}))
    lines = [s for s in findings(result) if s.startswith("Where attention does not help")]
    assert len(lines) == 1 and "**ResNet50 + CBAM** against ResNet50: worse beyond noise on top-1 accuracy" in lines[0]
    assert "better beyond noise" not in lines[0]


def test_findings_come_in_simplified_chinese_with_the_same_numbers(shipped):
    english, chinese = findings(shipped, "en"), findings(shipped, "zh-CN")
    assert len(english) == len(chinese)
    assert chinese[0].startswith("**ResNet50 + CBAM** 准确率最高") and "98.0 % [96.5, 99.2]" in chinese[0]
    assert "超出噪声" in findings_markdown(shipped, "zh-CN")


def test_every_finding_text_is_in_both_locale_files():
    english = {k for k in locale("en") if k.startswith("finding_")}
    assert english and english == {k for k in locale("zh-CN") if k.startswith("finding_")}


def test_a_chinese_browser_gets_chinese_findings_and_any_other_english():
    assert language_of("zh-CN,zh;q=0.9,en;q=0.8") == "zh-CN" and language_of("zh-TW") == "zh-CN"
    assert language_of("en-US,en;q=0.9") == "en" and language_of("fr") == "en" and language_of(None) == "en"


def test_a_result_with_one_model_has_no_findings():
    result = made_up_result()
    result["variants"] = ["resnet50"]
    assert findings_markdown(result) == ""


# --------------------------------------------------------------------------- the tab


@pytest.fixture
def shipped_copy(tmp_path) -> Path:
    """A weights folder whose set "builtin" has the shipped analysis (the tab reads only its files)."""
    shutil.copytree(SHIPPED, tmp_path / "builtin" / analysis_config.ANALYSIS_DIR)
    (tmp_path / "manifest.json").write_text(json.dumps({"default_set": "builtin", "sets": {}}))
    return tmp_path


def test_the_tab_shows_the_findings_after_the_summary(shipped_copy):
    with gr.Blocks():
        shown = build_analysis_tab(shipped_copy, "builtin", language="zh-CN")
    shipped = analysis_results.read_result(shipped_copy / "builtin" / "analysis")
    assert shown["findings"].value == findings_markdown(shipped, "zh-CN")
    assert shown["findings"].elem_id == "analysis-findings"


def test_an_odd_last_plot_shares_its_row_with_an_empty_column(shipped_copy):
    folder = shipped_copy / "builtin" / analysis_config.ANALYSIS_DIR
    result = json.loads((folder / analysis_config.JSON_NAME).read_text())
    result["plots"] = [p for p in result["plots"] if p != "knockout.png"]  # an odd number of plots
    (folder / analysis_config.JSON_NAME).write_text(json.dumps(result))
    with gr.Blocks():
        shown = build_analysis_tab(shipped_copy, "builtin")
    assert len(shown["plots"]) % 2 == 1
    rows = {name: plot.parent.parent for name, plot in shown["plots"].items()}
    for row in set(rows.values()):
        assert isinstance(row, gr.Row) and len(row.children) == 2
    last_row = rows[list(shown["plots"])[-1]]
    assert not last_row.children[1].children  # the empty column


def test_the_shipped_analysis_is_format_2_with_every_plot(shipped):
    raw = json.loads((SHIPPED / analysis_config.JSON_NAME).read_text())
    assert raw["format"] == analysis_config.FORMAT == 2
    assert sorted(raw["plots"]) == sorted(analysis_config.plot_files(shipped).values())
