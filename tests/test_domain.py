"""The out-of-domain score: fitted statistics, the score from the image's own pass, files and results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_model_set, with_domain_threshold

from attnviz.capture import Capture
from attnviz.domain import SCORERS, DomainModel, fit_statistics, raw_score
from attnviz.domain_fit import auroc, fit_set, main
from attnviz.errors import AttnvizError
from attnviz.explainer import Explainer
from attnviz.probes import KINDS, probe_image
from attnviz.scenes import CLASSES, make_scene
from attnviz.weights import Manifest, load_model_set


def clusters(seed: int = 0, n: int = 200, dim: int = 32, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of ``classes`` tight clusters in ``dim`` dimensions, and their labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator) * 5
    labels = torch.arange(n) % classes
    return centres[labels] + 0.3 * torch.randn(n, dim, generator=generator), labels


def test_every_scorer_ranks_a_far_point_above_the_training_points():
    features, labels = clusters()
    stats = fit_statistics(features, labels, 3, components=8, bank=50)
    far = features[:1] + 40.0
    logits = torch.zeros(len(features) + 1, 3)  # energy reads the logits only: equal logits score equal
    for scorer in set(SCORERS) - {"energy"}:
        scores = raw_score(scorer, stats, torch.cat([features, far]), logits)
        assert scores[-1] > scores[:-1].max(), scorer


def test_mahalanobis_is_small_at_a_class_mean_and_the_statistics_stay_small():
    features, labels = clusters(dim=2048, n=300)
    stats = fit_statistics(features, labels, 3)
    class_mean = features[labels == 1].mean(dim=0, keepdim=True)
    assert raw_score("mahalanobis", stats, class_mean, torch.zeros(1, 3)).item() < 1.0
    shipped = DomainModel("mahalanobis+residual", stats, 1.0).to_tensors()
    assert sum(t.numel() * t.element_size() for t in shipped.values()) < 1_000_000


def test_fitting_is_deterministic():
    features, labels = clusters(seed=3)
    a, b = fit_statistics(features, labels, 3, components=8), fit_statistics(features, labels, 3, components=8)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_auroc_of_separated_and_identical_scores():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0


def test_captured_features_are_what_the_classifier_reads(tiny_explainer):
    model = tiny_explainer.explainers["se"].model
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with Capture(model, records=False, features=True) as capture:
        logits = capture.run(x)
    assert capture.features.shape == (2, 2048)
    torch.testing.assert_close(model.fc(capture.features), logits)
    assert not model.fc._forward_pre_hooks  # the hook came off with the capture


def test_probe_images_are_pure_functions_of_their_arguments():
    for kind in KINDS:
        a, b = probe_image(kind, 2), probe_image(kind, 2)
        assert a.shape == (224, 224, 3) and a.dtype == np.uint8 and np.array_equal(a, b), kind
    assert not np.array_equal(probe_image("noise", 0), probe_image("noise", 1))


@pytest.fixture(scope="module")
def scene_set(tmp_path_factory):
    """A random four-model set with the scenes' classes (64 px), its scorer fitted on a few scenes."""
    folder = make_model_set(tmp_path_factory.mktemp("domain"), "scenes", classes=list(CLASSES))
    result = fit_set("scenes", folder, train=48, val=24, probes=1, progress=False)
    return folder, result


def test_fit_stores_a_checked_file_per_model_and_the_comparison(scene_set):
    folder, result = scene_set
    manifest = Manifest(folder)
    assert result["chosen"] in SCORERS
    for variant, entry in manifest.data["sets"]["scenes"]["models"].items():
        ref = entry["domain"]
        assert ref["file"] == f"scenes/{variant}.domain.safetensors" and len(ref["sha256"]) == 64
        assert ref["scorer"] == result["chosen"] and (folder / ref["file"]).stat().st_size < 1_000_000
        assert set(result["models"][variant]) == set(SCORERS)
    saved = json.loads((folder / "scenes" / "domain.json").read_text())
    assert saved["choice"]["chosen"] == result["chosen"]


def test_each_result_carries_its_score_and_flag_and_the_explanation_any_flag(scene_set):
    folder, _ = scene_set
    explainer = Explainer(load_model_set("scenes", folder))
    scene = make_scene(0, "test", 0).image
    first, again = explainer.explain(scene), explainer.explain(scene)
    for variant, result in first.results.items():
        assert isinstance(result.domain_score, float)
        assert result.domain_score == again.results[variant].domain_score  # deterministic
        threshold = explainer.explainers[variant].domain.threshold
        assert result.out_of_domain == (result.domain_score > threshold)
    assert first.out_of_domain == any(r.out_of_domain for r in first.results.values())
    summary = first.summary()
    assert summary["out_of_domain"] == first.out_of_domain
    assert {"domain_score", "out_of_domain"} <= set(summary["models"]["cbam"])


def test_a_flat_colour_is_flagged_by_a_model_whose_threshold_it_passes(scene_set):
    """The flag is the comparison with the model's threshold: a threshold under an image's score flags it."""
    folder, _ = scene_set
    explainer = Explainer(load_model_set("scenes", folder))
    flat = probe_image("flat", 0)
    score = explainer.explain(flat, variants=("resnet50",)).results["resnet50"].domain_score
    explainer.explainers["resnet50"].domain.threshold = score - 1e-6
    assert explainer.explain(flat, variants=("resnet50",)).out_of_domain is True
    explainer.explainers["resnet50"].domain.threshold = score + 1e-6
    assert explainer.explain(flat, variants=("resnet50",)).out_of_domain is False


def test_a_tampered_statistics_file_is_refused_like_a_tampered_checkpoint(scene_set, tmp_path):
    folder, _ = scene_set
    copy = tmp_path / "weights"
    import shutil

    shutil.copytree(folder, copy)
    path = copy / "scenes" / "se.domain.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AttnvizError, match="sha256 .* the file was changed or damaged"):
        Explainer(load_model_set("scenes", copy))


def test_a_set_without_statistics_says_not_calibrated(tiny_explainer, scene_image):
    explanation = tiny_explainer.explain(scene_image)
    assert all(r.domain_score is None and r.out_of_domain is None for r in explanation.results.values())
    assert explanation.out_of_domain is None
    summary = explanation.summary()
    assert summary["out_of_domain"] is None and summary["models"]["se"]["out_of_domain"] is None


def test_fitting_a_set_not_trained_on_scenes_is_one_line(tiny_weights_dir, capsys):
    assert main(["fit", "--set", "tiny", "--weights-dir", str(tiny_weights_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model set 'tiny' was not trained on attnviz's scenes") and "\n" not in err


def test_the_page_notice_names_each_flagging_model_and_is_empty_in_domain(scene_set, tmp_path):
    from attnviz.ui import domain_notice

    folder, _ = scene_set
    flagging = Explainer(load_model_set("scenes", with_domain_threshold(folder, "scenes", -1e9, tmp_path / "a")))
    explanation = flagging.explain(probe_image("text", 0), variants=("se", "cbam"))
    notice = domain_notice(explanation)
    assert "ood_notice" in notice  # the translated headline's marker, replaced by the page
    assert "ResNet50 + SE" in notice and "ResNet50 + CBAM" in notice and "ECA" not in notice
    passing = Explainer(load_model_set("scenes", with_domain_threshold(folder, "scenes", 1e9, tmp_path / "b")))
    assert domain_notice(passing.explain(probe_image("text", 0))) == ""


def test_the_batch_cli_reports_out_of_domain_images(scene_set, tmp_path, capsys):
    from PIL import Image

    from attnviz.cli import main as cli_main

    folder, _ = scene_set
    weights = with_domain_threshold(folder, "scenes", -1e9, tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(probe_image("lines", 0)).save(images / "drawing.png")
    out = tmp_path / "out"
    assert cli_main(["explain", str(images), "--set", "scenes", "--weights-dir", str(weights), "--out", str(out),
                     "--models", "resnet50"]) == 0
    assert "drawing.png" in capsys.readouterr().out.split("(out of domain")[0]
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    assert summary["out_of_domain"] is True and summary["models"]["resnet50"]["out_of_domain"] is True
    pages = " ".join(p.read_text() for p in out.glob("report*.html"))
    assert "unlike the scenes these models were trained on" in pages and "out-of-domain score" in pages


def test_a_stored_model_scores_as_its_float64_statistics_do():
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(300, 32, generator=generator)
    labels = torch.arange(300) % 3
    stored = fit_statistics(features, labels, 3, components=8, bank=50)
    probe = torch.randn(5, 32, generator=generator) * 3
    logits = torch.randn(5, 3, generator=generator)
    for scorer in SCORERS:
        model = DomainModel.from_tensors({**stored, "threshold": torch.tensor([1.0])}, scorer)
        expected = raw_score(scorer, {k: v.double() for k, v in stored.items()}, probe, logits).numpy()
        np.testing.assert_array_equal(model.score(probe, logits), expected)
        assert all(v.dtype == torch.float32 for v in model.to_tensors().values() if v.numel() > 1)  # stored as is
