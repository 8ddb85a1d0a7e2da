"""The CAM method table: every row names a pytorch-grad-cam class that exists, method lists group by kind, and
every method reaches the library, the command line, the app's handler and the analysis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_grad_cam
from conftest import TINY_CLASSES
from PIL import Image

from attnviz import explain
from attnviz.analysis import config as analysis_config
from attnviz.cli import _explain_parser, main
from attnviz.errors import AttnvizError
from attnviz.explainer import ExplainSettings
from attnviz.methods import CAM_METHODS, KINDS, method_choices

OWN_CALL = ("finercam", "shapleycam", "refinecam", "fullgrad", "guidedgradcam")  # as the README lists them


def test_every_method_names_a_pytorch_grad_cam_class_a_kind_and_one_line():
    for key, method in CAM_METHODS.items():
        assert method.key == key
        assert isinstance(getattr(pytorch_grad_cam, method.library_class), type), key
        assert method.kind in KINDS, key
        assert method.description and "\n" not in method.description and len(method.description) <= 110, key
    assert len({m.label for m in CAM_METHODS.values()}) == len(CAM_METHODS)


def test_method_choices_are_grouped_by_kind_and_mark_the_slow_ones():
    choices = method_choices()
    assert sorted(key for _, key in choices) == sorted(CAM_METHODS)
    kinds = [CAM_METHODS[key].kind for _, key in choices]
    assert kinds == sorted(kinds, key=KINDS.index)  # each kind in one run, in the order of KINDS
    for label, key in choices:
        method = CAM_METHODS[key]
        assert label.startswith(method.label) and method.kind in label
        assert label.endswith("(slow)") == (method.kind == "perturbation")


def test_the_methods_on_pytorch_grad_cams_own_call_say_why_and_get_no_gradient_from_the_pass():
    assert tuple(key for key, m in CAM_METHODS.items() if m.own_call) == OWN_CALL
    for key in OWN_CALL:
        method = CAM_METHODS[key]
        assert "\n" not in method.own_call and not method.pass_gradient, key
    assert CAM_METHODS["gradcam"].pass_gradient and not CAM_METHODS["eigencam"].pass_gradient


@pytest.mark.parametrize(("method", "option"),
                         [("finercam", "aug_smooth"), ("refinecam", "aug_smooth"), ("refinecam", "eigen_smooth")])
def test_a_smoothing_option_the_librarys_call_lacks_is_refused_in_one_line(method, option):
    with pytest.raises(AttnvizError, match=f"takes no {option}") as caught:
        ExplainSettings(method=method, **{option: True}).validate(TINY_CLASSES)
    assert "\n" not in str(caught.value)


def test_a_smoothing_option_the_librarys_call_takes_is_accepted():
    ExplainSettings(method="finercam", eigen_smooth=True).validate(TINY_CLASSES)
    ExplainSettings(method="fullgrad", aug_smooth=True, eigen_smooth=True).validate(TINY_CLASSES)


def test_the_command_line_offers_every_method():
    parser = _explain_parser()
    for key in CAM_METHODS:
        assert parser.parse_args(["scene.png", "--out", "out", "--method", key]).method == key


def test_the_analysis_takes_every_method_but_the_perturbation_ones():
    methods = tuple(k for k, m in CAM_METHODS.items() if m.kind != "perturbation")
    analysis_config.AnalysisConfig(methods=methods).validate()
    for key in (k for k, m in CAM_METHODS.items() if m.kind == "perturbation"):
        with pytest.raises(AttnvizError, match="unknown CAM method"):
            analysis_config.AnalysisConfig(methods=(key,)).validate()


@pytest.fixture
def scene_file(tmp_path, scene_image):
    path = tmp_path / "images" / "scene.png"
    path.parent.mkdir()
    Image.fromarray(scene_image).save(path)
    return path


def test_a_refused_smoothing_option_stops_the_command_before_any_image(scene_file, tiny_weights_dir, tmp_path,
                                                                       capsys):
    code = main(["explain", str(scene_file), "--weights-dir", str(tiny_weights_dir), "--method", "refinecam",
                 "--eigen-smooth", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "RefineCAM takes no eigen_smooth" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_command_line_explains_with_a_method_on_its_own_call(scene_file, tiny_weights_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(scene_file), "--weights-dir", str(tiny_weights_dir), "--models", "resnet50",
                 "--method", "shapleycam", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    [summary] = [json.loads(p.read_text(encoding="utf-8")) for p in out.rglob("summary.json")]
    assert summary["settings"]["method"] == "shapleycam"


@pytest.mark.slow
def test_the_library_explains_with_a_method_on_its_own_call(scene_image, tiny_weights_dir):
    result = explain(scene_image, "tiny", weights_dir=str(tiny_weights_dir), method="fullgrad",
                     variants=("resnet50",))
    heatmap = result.results["resnet50"].heatmap
    assert heatmap.shape == result.view.shape[:2] and heatmap.min() == 0 and heatmap.max() == pytest.approx(1, 1e-5)


@pytest.mark.slow
def test_the_apps_handler_explains_with_guided_grad_cam(scene_file, tiny_weights_dir):
    from attnviz import ui  # gradio: only for this test

    analysis = ui.AttnvizApp(tiny_weights_dir).analyse(str(scene_file), "tiny", models=["resnet50"],
                                                       method="guidedgradcam")
    assert analysis.explanation.settings.method == "guidedgradcam"
    heatmap = analysis.explanation.results["resnet50"].heatmap
    assert np.isfinite(heatmap).all() and heatmap.max() == pytest.approx(1, 1e-5)
    assert "resnet50" in analysis.rendered.models
