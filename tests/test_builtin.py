"""The shipped built-in model set: files match the manifest and the models know the example scenes."""

from pathlib import Path

import pytest

from attnviz.scenes import CLASSES
from attnviz.weights import Manifest, default_weights_dir, verify

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def builtin():
    manifest = Manifest(default_weights_dir())
    if "builtin" not in manifest.set_names():
        pytest.fail("weights/manifest.json has no built-in set: train it (python -m attnviz.train) and register it")
    return manifest, manifest.get("builtin")


def test_builtin_set_is_the_default_and_knows_the_scene_classes(builtin):
    manifest, info = builtin
    assert manifest.default_set == "builtin"
    assert info.classes == CLASSES
    assert "OpenMoji" in info.extra["attribution"]
    for entry in info.models.values():
        assert entry.preprocessing.crop == 224 and entry.accuracy["test"] >= 0.0
        assert entry.extra["train_minutes"] > 0 and entry.extra["recipe"]["phases"][-1][0] == 224


def test_shipped_files_match_the_manifest_sha256_and_the_architecture(builtin):
    manifest, _ = builtin
    assert [status for _, _, status in verify(manifest, "builtin")] == ["ok"] * len(manifest.get("builtin").models)


@pytest.mark.slow
def test_shipped_models_classify_the_single_object_examples_correctly(builtin):
    from attnviz.explainer import Explainer
    from attnviz.weights import load_model_set

    explainer = Explainer(load_model_set("builtin"))
    singles = sorted(EXAMPLES.glob("scene_*.png"))
    assert len(singles) >= 6
    wrong = []
    for path in singles:
        expected = path.stem.split("_", 2)[2]
        result = explainer.explain(path, top_k=1)
        wrong += [
            f"{path.name}: {v} says {r.top[0].name}" for v, r in result.results.items() if r.top[0].name != expected
        ]
    assert wrong == []


@pytest.mark.slow
def test_shipped_out_of_domain_score_passes_the_example_scenes_and_flags_a_cat_photo(builtin):
    """The shipped statistics on real inputs: the single-object examples are scenes (no model flags one), and
    scikit-image's photo of a cat (which the SE model calls a horse) is flagged."""
    import numpy as np
    from skimage import data

    from attnviz.explainer import Explainer
    from attnviz.weights import load_model_set

    explainer = Explainer(load_model_set("builtin"))
    for path in sorted(EXAMPLES.glob("scene_*.png")):
        explanation = explainer.explain(path)
        assert explanation.out_of_domain is False, (path.name, explanation.summary()["models"])
    photo = explainer.explain(np.asarray(data.chelsea()))
    assert photo.out_of_domain is True
    assert all(isinstance(r.domain_score, float) for r in photo.results.values())
