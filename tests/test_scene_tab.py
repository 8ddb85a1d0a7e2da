"""The Scene lab tab and its endpoint: a scene drawn from the options, explained at once, measured per model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_model_set
from PIL import Image
from servers import running_app

from attnviz import scene_lab, ui
from attnviz.scene_tab import mask_outline, options_from
from attnviz.scenes import CLASSES

# class, second class, design, x, y, scale, rotation, flip, background, distractors, seed, background variant
CONTROLS = ("dog", "none", "openmoji", 0.3, 0.6, 0.4, 10, False, "stripes", 2, 7, 0)


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory) -> Path:
    """Random models that know the scene classes (32 px), as the default set, and a tiny set beside them."""
    weights = make_model_set(tmp_path_factory.mktemp("scene-tab"), "scenes", classes=CLASSES, crop=32,
                             variants=("resnet50", "cbam"))
    return make_model_set(weights, "tiny", make_default=False, variants=("resnet50",))


@pytest.fixture(scope="module")
def tab(scenes_dir):
    app = ui.AttnvizApp(scenes_dir)
    app.build()
    return app.scene_tab


def test_mask_outline_marks_the_masks_boundary_only():
    mask = np.zeros((7, 7), bool)
    mask[2:5, 2:5] = True
    out = mask_outline(np.zeros((7, 7, 3), np.uint8), mask)
    drawn = out.any(axis=2)
    assert drawn.sum() == 8 and not drawn[3, 3] and drawn[2, 2] and not drawn[0, 0]


def test_a_scene_is_drawn_explained_and_measured_per_model(tab):
    status, gallery, numbers, files = tab.page("scenes", *CONTROLS)
    assert "done" in status and status.endswith("dog")
    assert [caption for _, caption in gallery] == ["scene", "resnet50: ResNet50", "cbam: ResNet50 + CBAM"]
    assert [Path(f).name for f in files] == ["scene.png", "mask.png", "scene.json"]
    summary = json.loads(Path(files[2]).read_text())
    assert summary["target"] == "dog" and set(summary["models"]) == {"resnet50", "cbam"}
    scene = scene_lab.draw_scene(options_from(*CONTROLS))
    np.testing.assert_array_equal(np.asarray(Image.open(files[0])), scene.image)  # the options' own scene
    np.testing.assert_array_equal(np.asarray(Image.open(files[1])) > 0, scene.masks[0])
    for model in summary["models"].values():
        assert 0 <= model["energy_in_mask"] <= 1 and 0 <= model["mask_iou"] <= 1
        assert f"| {model['title']} |" in numbers
    assert summary["tolerance_px"] == 15 and "no analysis of this set" in summary["measured_as"]


def test_the_same_options_give_the_same_scene_and_numbers(tab):
    first = json.loads(Path(tab.page("scenes", *CONTROLS)[3][2]).read_text())
    again = json.loads(Path(tab.page("scenes", *CONTROLS)[3][2]).read_text())
    assert first["models"] == again["models"]


def test_one_click_changes_change_one_thing_and_run_again(tab):
    x, y, moves, status, gallery, _, files = tab.move("scenes", *CONTROLS, 0)
    assert moves == 1 and (x, y) != (0.3, 0.6) and "done" in status
    moved = json.loads(Path(files[2]).read_text())["scene"]
    assert moved["options"]["class_name"] == "dog" and moved["options"]["distractors"] == 2
    distractors, *shown = tab.add("scenes", *CONTROLS)
    assert distractors == 3 and "done" in shown[0]
    variant, *shown = tab.new_background("scenes", *CONTROLS)
    assert variant == 1
    before = np.asarray(Image.open(tab.page("scenes", *CONTROLS)[3][0]))
    assert not np.array_equal(before, np.asarray(Image.open(shown[3][0])))


def test_an_out_of_range_option_is_one_clear_line(tab):
    status, gallery, numbers, files = tab.page("scenes", "dog", "none", "openmoji", 0.3, 0.6, 0.9, 10, False,
                                               "stripes", 2, 7, 0)
    assert status.startswith("⚠️") and "scale 0.9 is outside 0.15 to 0.6" in status and "\n" not in status
    assert gallery is None and files is None


def test_a_set_not_trained_on_the_scenes_says_so(tab):
    status, *_ = tab.page("tiny", *CONTROLS)
    assert "model set 'tiny' was not trained on attnviz's scenes" in status


@pytest.mark.slow
def test_scene_endpoint_answers_over_http(scenes_dir):
    from gradio_client import Client

    with running_app(scenes_dir) as url:
        client = Client(url, analytics_enabled=False, verbose=False)
        summary, images, files = client.predict(class_name="fish", x=0.7, y=0.4, scale=0.3, seed=3,
                                                api_name="/scene")
        assert summary["target"] == "fish" and set(summary["models"]) == {"resnet50", "cbam"}
        assert len(images) == 3 and len(files) == 3
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match="greater than maximum value 35"):  # the slider's own check
            client.predict(rotation=90, api_name="/scene")
