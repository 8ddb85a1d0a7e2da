"""The model-parameter randomisation test (attnviz.sanity): its similarity measures, its known answers on a small
seeded model, what it leaves on the served model, the analysis section and the app's option."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
import torch
from conftest import randomise
from model_state import tensors_kept_on
from scipy.stats import spearmanr

from attnviz import sanity
from attnviz.errors import AttnvizError
from attnviz.models import build_resnet50

CLASSES4 = ["a", "b", "c", "d"]


def seeded_model(variant: str = "resnet50", seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = randomise(build_resnet50(variant, num_classes=4), seed=seed).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def images(count: int = 6, size: int = 64, seed: int = 1) -> torch.Tensor:
    """Smooth random images, each with a bright square of one colour in its own place: maps with structure."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(count, 3, size, size, generator=g), 5, 1, 2)
    places = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1), (0, 1)]  # in quarters of the image
    for i in range(count):
        top, left = (q * size // 4 for q in places[i % len(places)])
        x[i, i % 3, top : top + size // 2, left : left + size // 2] += 2.5
    return x


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """A seeded random-weight ResNet50 at 64 px: layer4 is 2 x 2 there, so each scene's correlation is coarse,
    but the six scenes' mean after the full cascade lies well below 0.5 (about 0.16)."""
    return seeded_model("resnet50", seed=0)


@pytest.fixture(scope="module")
def found(model) -> sanity.ModelSanity:
    return sanity.check_model(model, "resnet50", CLASSES4, images(), ["gradcam"], seed=0, batch_size=6)


# --------------------------------------------------------------------------- the measures


def test_ssim_of_a_map_with_itself_is_one():
    rng = np.random.default_rng(0)
    image = rng.random((40, 30))
    assert sanity.ssim(image, image) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_two_flat_maps_is_the_luminance_term_of_their_values():
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)  # no variance: the contrast-structure term is 1
    assert sanity.ssim(np.full((16, 16), 0.2), np.full((16, 16), 0.6)) == pytest.approx(expected, rel=1e-9)


def test_ssim_of_an_11_pixel_square_is_the_formula_over_its_one_gaussian_window():
    rng = np.random.default_rng(4)
    x, y = rng.random((11, 11)), rng.random((11, 11))
    offsets = np.arange(-5, 6)
    w = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, vxy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2, (w * x * y).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * vxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert sanity.ssim(x, y) == pytest.approx(expected, rel=1e-9)


def test_spearman_is_scipys_on_absolute_values_with_ties():
    rng = np.random.default_rng(2)
    a = np.round(rng.normal(size=(20, 20)), 1)  # rounding makes ties
    b = a + rng.normal(scale=0.5, size=(20, 20))
    assert sanity.spearman_abs(a, b) == pytest.approx(spearmanr(np.abs(a).ravel(), np.abs(b).ravel())[0], abs=1e-12)


def test_a_flat_map_correlates_one_with_itself_and_zero_with_another():
    flat = np.zeros((12, 12))
    assert sanity.spearman_abs(flat, flat) == 1.0
    assert sanity.spearman_abs(flat, np.arange(144.0).reshape(12, 12)) == 0.0


def test_the_edge_map_reads_the_image_only():
    x = torch.zeros(1, 3, 20, 20)
    x[..., 10:] = 1.0  # one vertical edge
    edges = sanity.sobel_edges(x)[0]
    assert edges.max() == 1.0 and set(np.flatnonzero(edges.max(axis=0))) == {9, 10}


# --------------------------------------------------------------------------- the steps


def test_the_cascade_goes_from_fc_down_every_block_to_the_stem():
    steps = sanity.randomisation_steps(build_resnet50("resnet50", num_classes=2))
    assert steps[:4] == ["fc", "layer4.2", "layer4.1", "layer4.0"] and steps[-2:] == ["layer1.0", "stem"]
    assert len(steps) == 1 + 16 + 1


def test_a_step_reinitialises_its_modules_only_and_leaves_the_callers_random_state():
    model = seeded_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    sanity.randomise_step(model, "layer4.1", seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("layer4.1.") for k in changed)
    assert torch.equal(model.layer4[1].bn1.running_var, torch.ones_like(model.layer4[1].bn1.running_var))


def test_a_method_with_passes_of_its_own_is_refused_in_one_line():
    with pytest.raises(AttnvizError, match="cannot run CAM method 'scorecam'"):
        sanity.check_methods(["gradcam", "scorecam"])


# --------------------------------------------------------------------------- the known answers


def test_the_edge_map_fails_the_cascade(found):
    verdict = sanity.summarise(found, resamples=200)["verdict"][sanity.EDGES]
    assert verdict["passes"] is False and verdict["final"]["mean"] == pytest.approx(1.0)


def test_gradcam_passes_the_cascade(found):
    verdict = sanity.summarise(found, resamples=200)["verdict"]["gradcam"]
    assert verdict["passes"] is True and verdict["final"]["high"] < sanity.THRESHOLD


def test_the_original_map_is_the_start_of_every_curve(found):
    for measure in sanity.MEASURES:
        np.testing.assert_allclose(found.cascade[measure]["gradcam"][0], 1.0, atol=1e-12)
    assert found.cascade["spearman"]["gradcam"].shape == (len(found.steps) + 1, 6)


def test_the_independent_test_restores_each_step_so_the_cascade_starts_from_the_trained_model(found):
    # fc is the cascade's first step and the independent test's first: equal only if every independent step was
    # put back before the cascade began
    for measure in sanity.MEASURES:
        np.testing.assert_array_equal(found.cascade[measure]["gradcam"][1], found.independent[measure]["gradcam"][0])
    assert not np.allclose(found.independent["spearman"]["gradcam"][0], 1.0)  # fc alone did change the map


def test_every_map_explains_the_trained_models_predicted_class(model, found):
    with torch.no_grad():
        assert found.targets == model(images()).argmax(dim=1).tolist()


# --------------------------------------------------------------------------- the served model


def test_the_served_model_is_left_as_it_was(model, found):
    reference = seeded_model("resnet50", seed=0)
    for (name, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(value, expected), name
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    assert tensors_kept_on(model) == []


def test_groups_of_scenes_joined_give_the_values_of_one_call_on_all(model, found):
    """What lets the analysis spread the test over units of scenes: each scene's values do not depend on the
    scenes checked beside it (the randomised weights come from the seed and the step)."""
    x = images()
    parts = [sanity.check_model(model, "resnet50", CLASSES4, x[a:b], ["gradcam"], seed=0, batch_size=6)
             for a, b in ((0, 1), (1, 4), (4, 6))]
    joined = sanity.join(parts)
    assert joined.targets == found.targets and joined.steps == found.steps
    assert joined.passes == found.passes
    for table, whole in ((joined.cascade, found.cascade), (joined.independent, found.independent)):
        for measure, kinds in whole.items():
            for kind, rows in kinds.items():
                assert table[measure][kind].shape == rows.shape
                np.testing.assert_allclose(table[measure][kind], rows, atol=1e-4)
    other_seed = sanity.check_model(model, "resnet50", CLASSES4, x[:1], ["gradcam"], seed=1, batch_size=6)
    assert not np.allclose(other_seed.cascade["ssim"]["gradcam"], joined.cascade["ssim"]["gradcam"][:, :1])


def test_a_set_is_checked_with_one_private_copy_in_memory_at_a_time(tiny_explainer, scene_image, monkeypatch):
    made = []
    original = sanity.private_copy

    def counting(model):
        gc.collect()
        alive = [ref for ref in made if ref() is not None]
        assert not alive, "an earlier copy is still in memory"
        copy = original(model)
        made.append(weakref.ref(copy))
        return copy

    monkeypatch.setattr(sanity, "private_copy", counting)
    report = sanity.check_image(tiny_explainer, scene_image, "gradcam", ["resnet50", "se"])
    assert len(made) == 2 and list(report.models) == ["resnet50", "se"]


# --------------------------------------------------------------------------- the analysis section


@pytest.fixture(scope="module")
def section_result(tmp_path_factory):
    from conftest import make_model_set

    from attnviz.analysis import config as analysis_config
    from attnviz.analysis import run as analysis_run
    from attnviz.scenes import CLASSES
    from attnviz.weights import load_model_set

    weights = make_model_set(tmp_path_factory.mktemp("sanity-weights"), "scenes", classes=CLASSES, crop=32,
                             variants=("resnet50",))
    config = analysis_config.AnalysisConfig(sanity_scenes=2, sanity_methods=("gradcam", "eigencam"), resamples=50)
    result = {"variants": ["resnet50"], "titles": {"resnet50": "ResNet50"}}
    return analysis_run.run_sections(load_model_set("scenes", weights), result, ["sanity"], config, progress=False)


def test_the_section_lands_under_sanity_with_a_verdict_per_method_and_the_edge_map(section_result):
    from attnviz.analysis.results import finite as _finite

    section = json.loads(json.dumps(_finite(section_result)))["sanity"]
    assert section["scenes"] == 2 and section["methods"] == ["gradcam", "eigencam"] and section["layer"] == "layer4"
    assert set(section["models"]["resnet50"]["verdict"]) == {"gradcam", "eigencam", sanity.EDGES}
    assert len(section["models"]["resnet50"]["independent"]["ssim"]["gradcam"]) == len(section["steps"])
    assert "sanity" in section_result["timing"]["phases_s"]


def test_the_section_lists_and_draws_its_plots(section_result, tmp_path):
    from attnviz.analysis.config import plot_files
    from attnviz.analysis.plots import draw_plot

    files = plot_files(section_result)
    assert files["sanity"] == "sanity.png" and files["sanity_independent"] == "sanity_independent.png"
    assert draw_plot("sanity", section_result, tmp_path / "sanity.png") and (tmp_path / "sanity.png").stat().st_size
    assert "sanity" not in plot_files({"variants": []})  # an analysis without the section lists no such plot


def test_the_report_states_the_rule_and_each_verdict(section_result):
    from attnviz.analysis.sanity import markdown

    text = "\n".join(markdown(section_result, section_result["titles"]))
    assert "the upper end of the interval is below 0.5" in text
    (edges,) = [line for line in text.splitlines() if line.startswith("| ResNet50 | Sobel edge map |")]
    assert edges.endswith("| **fails** |")


def test_the_findings_say_which_methods_pass_and_that_the_edge_map_fails():
    from attnviz.analysis.findings import findings
    from attnviz.weights import default_weights_dir

    path = default_weights_dir() / "builtin" / "analysis" / "analysis.json"
    if not path.is_file():
        pytest.skip("no shipped analysis")
    result = json.loads(path.read_text())
    verdict = {"passes": True, "final": {}}
    result["sanity"] = {"scenes": 5, "methods": ["gradcam", "eigencam"], "models": {
        v: {"verdict": {"gradcam": verdict, "eigencam": {**verdict, "passes": v != "se"},
                        sanity.EDGES: {**verdict, "passes": False}}} for v in result["variants"]}}
    sentence = findings(result)[-1]
    assert "the maps of Grad-CAM pass on every model" in sentence
    assert "those of EigenCAM fail on ResNet50 + SE" in sentence
    assert sentence.endswith("fails, as it must.")


# --------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def app(tiny_weights_dir):
    from attnviz import ui

    app = ui.AttnvizApp(tiny_weights_dir)
    app.build()
    return app


def page(app, image, **options) -> dict:
    from attnviz import ui

    settings = {"model_set": "tiny", "models": ["resnet50"], "method": "gradcam", "target": ui.OWN_TOP1,
                "layer": "layer4", "opacity": 0.5, "colormap": "jet", "aug_smooth": False, "eigen_smooth": False,
                **options}
    out = app.explain_page(image, **settings)
    return {name: out[app.components[name]] for name in app._page_output_names()}


@pytest.fixture
def scene_file(scene_image, tmp_path):
    from PIL import Image

    path = tmp_path / "scene.png"
    Image.fromarray(scene_image).save(path)
    return path


@pytest.mark.slow
def test_the_page_checks_the_image_and_gives_each_shown_model_its_verdict(app, scene_file):
    from PIL import Image

    out = page(app, scene_file, models=["resnet50", "se"], sanity=True)
    assert out["sanity_column"].visible is True and "sanity_done" in str(out["sanity_status"])
    assert np.asarray(Image.open(out["sanity_plot"])).ndim == 3
    for variant in ("resnet50", "se"):
        line = str(out[f"sanity_{variant}"])
        assert ("sanity_passes" in line) != ("sanity_fails" in line) and "Spearman" in line
    assert out["sanity_cbam"] == "" and list(out["last"].sanity.models) == ["resnet50", "se"]


def test_without_the_option_no_sanity_check_runs(app, scene_file):
    out = page(app, scene_file)
    assert out["sanity_column"].visible is False and out["last"].sanity is None


def test_a_method_with_passes_of_its_own_and_the_sanity_check_is_one_line_before_any_model_runs(app, scene_file):
    out = page(app, scene_file, method="scorecam", sanity=True)
    assert out["status"].startswith("⚠️") and "cannot run CAM method 'scorecam'" in out["status"]
    assert out["last"] is None


def test_the_page_refuses_a_method_that_runs_pytorch_grad_cams_own_call(monkeypatch):
    from types import SimpleNamespace

    from attnviz import sanity_ui
    from attnviz.methods import CAM_METHODS

    fake = SimpleNamespace(key="ownpass", label="Own-CAM", kind="gradient", own_call="several passes of its own")
    monkeypatch.setitem(CAM_METHODS, "ownpass", fake)
    with pytest.raises(AttnvizError, match="Own-CAM runs pytorch-grad-cam's own call"):
        sanity_ui.check_method("ownpass")
