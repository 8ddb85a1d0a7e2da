"""Chance in the analysis: the masks' area share and RandomCAM, measured in a run and drawn, labelled, in the plots."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_model_set

from attnviz.analysis import config as analysis_config
from attnviz.analysis import items as analysis_items
from attnviz.analysis import plots as analysis_plots
from attnviz.analysis import run as analysis_run
from attnviz.analysis.plots import REFERENCES, reference_lines
from attnviz.scenes import CLASSES
from attnviz.weights import load_model_set

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "builtin" / "analysis" / analysis_config.JSON_NAME
CHANCE, BASELINE = REFERENCES["chance"][0], REFERENCES["baseline"][0]


def measured(means: dict[str, float]) -> dict:
    return {"models": {v: {"mean": m, "low": m - 0.01, "high": m + 0.01} for v, m in means.items()}}


def result_with(area: float) -> dict:
    return {"variants": ["resnet50", "se"], "area_share": {"test": area}}


def test_energy_plot_lines_are_chance_and_randomcam_when_randomcam_was_measured():
    group = {"gradcam@layer4": measured({"resnet50": 0.4, "se": 0.5}),
             "randomcam@layer4": measured({"resnet50": 0.10, "se": 0.14})}
    lines = reference_lines(result_with(0.08), "test", "energy", group)
    assert lines == pytest.approx({"chance": 0.08, "baseline": 0.12})


def test_energy_plot_has_only_the_area_line_when_randomcam_was_not_measured():
    group = {"gradcam@layer4": measured({"resnet50": 0.4, "se": 0.5})}
    assert reference_lines(result_with(0.08), "test", "energy", group) == {"chance": 0.08}


def test_the_area_share_is_no_chance_level_of_the_pointing_game():
    group = {"randomcam@layer4": measured({"resnet50": 0.3, "se": 0.5})}
    assert reference_lines(result_with(0.08), "test", "pointing", group) == pytest.approx({"baseline": 0.4})


def legends(result: dict, out: Path, monkeypatch) -> dict[str, list[str]]:
    """The legend entries of the plots that draw energy in mask, drawn from ``result``."""
    found: dict[str, list[str]] = {}

    def recording_save(fig, path):
        found[path.name] = [t.get_text() for legend in fig.legends for t in legend.get_texts()]

    monkeypatch.setattr(analysis_plots, "_save", recording_save)
    for name in ("localisation", "layers", "pairs"):
        assert analysis_plots.draw_plot(name, result, out / f"{name}.png")
    return found


def test_plots_of_a_result_without_randomcam_label_only_the_area_line(tmp_path, monkeypatch):
    shipped = json.loads(SHIPPED.read_text())
    assert "randomcam@layer4" not in shipped["localisation"]["test"]["energy"]  # the shipped run predates it
    for name, labels in legends(shipped, tmp_path, monkeypatch).items():
        assert CHANCE in labels, name
        assert not any("RandomCAM" in label for label in labels), name


def test_plots_of_a_result_with_randomcam_label_both_lines(tmp_path, monkeypatch):
    result = json.loads(SHIPPED.read_text())
    for section in (*result["localisation"].values(), result["pairs"]):
        for group in section.values():
            if "gradcam@layer4" in group:
                group["randomcam@layer4"] = copy.deepcopy(group["gradcam@layer4"])
    for name, labels in legends(result, tmp_path, monkeypatch).items():
        assert CHANCE in labels, name
        assert sum("RandomCAM" in label for label in labels) == 1, name


# --------------------------------------------------------------------------- a run


def run(weights: Path) -> dict:
    config = analysis_config.AnalysisConfig(val=0, threshold=0.5, test=3, unseen=0, pairs=0, faithfulness=1, steps=2,
                                    road_percentiles=(50,), resamples=10, workers=0, variants=("resnet50",))
    for section in analysis_config.SECTIONS:  # every section has a scene count; none is measured here
        setattr(config, f"{section}_scenes", 0)
    return analysis_run.run_analysis(load_model_set("one", weights), config, progress=False)


@pytest.fixture(scope="module")
def one_model(tmp_path_factory) -> Path:
    return make_model_set(tmp_path_factory.mktemp("chance"), "one", classes=CLASSES, crop=32, variants=("resnet50",))


@pytest.fixture(scope="module")
def small_run(one_model) -> dict:
    return run(one_model)


def test_a_run_stores_the_mean_area_share_of_the_masks_it_measured(one_model, small_run):
    preprocessing = load_model_set("one", one_model).preprocessing
    masks = [item.own for i in range(3) for item in analysis_items.scene_items("test", i, CLASSES, preprocessing)]
    assert small_run["area_share"]["test"] == pytest.approx(np.mean([m.mean() for m in masks]))
    assert 0 < small_run["area_share"]["test"] < 0.5


def test_a_run_measures_randomcam_at_layer4_for_localisation_only(small_run):
    for metric in analysis_config.LOCALISATION:
        assert "randomcam@layer4" in small_run["localisation"]["test"][metric]
    assert set(small_run["faithfulness"]["deletion"]) == {f"{m}@layer4" for m in analysis_config.DEFAULT_METHODS}


def test_randomcam_gives_the_same_numbers_every_run_and_leaves_numpy_as_it_was(one_model, small_run):
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    again = run(one_model)
    assert np.array_equal(np.random.random(3), expected)  # the run put numpy's global generator back
    energy = "randomcam@layer4"
    assert again["localisation"]["test"]["energy"][energy] == small_run["localisation"]["test"]["energy"][energy]
