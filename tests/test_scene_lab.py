"""The scene lab: scenes from explicit options, one-click changes, one image's localisation numbers, the CLI."""

import hashlib
import json
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from attnviz import designs
from attnviz.errors import AttnvizError
from attnviz.localisation import LocalisationSettings, localisation_settings, scene_metrics, view_mask
from attnviz.metrics import distance_to_mask
from attnviz.scene_lab import (
    MAX_DISTRACTORS,
    MIN_MOVE,
    SceneOptions,
    SceneOptionsError,
    draw_scene,
    filled_by_seed,
    moved,
    new_background,
    resolve,
    with_distractor,
)
from attnviz.scenes import CLASS_GLYPHS, CLASSES, DISTRACTOR_SCALE, SIZE, main
from attnviz.weights import Preprocessing

ROOT = Path(__file__).resolve().parents[1]


def _digest(scene) -> str:
    return hashlib.sha256(scene.image.tobytes() + scene.masks.tobytes()).hexdigest()


def _centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return (xs.min() + xs.max() + 1) / 2 / SIZE, (ys.min() + ys.max() + 1) / 2 / SIZE


# --------------------------------------------------------------------------- drawing


def test_same_options_and_seed_give_the_same_bytes_and_another_seed_another_scene():
    options = SceneOptions(class_name="dog", background="stripes", distractors=2, seed=7)
    assert _digest(draw_scene(options)) == _digest(draw_scene(options))
    assert _digest(draw_scene(options)) != _digest(draw_scene(replace(options, seed=8)))


def test_a_fresh_process_draws_the_same_bytes():
    options = SceneOptions(class_name="bird", second_class="car", distractors=3, seed=11)
    code = (
        "import hashlib; from attnviz.scene_lab import SceneOptions, draw_scene; "
        "s = draw_scene(SceneOptions(class_name='bird', second_class='car', distractors=3, seed=11)); "
        "print(hashlib.sha256(s.image.tobytes() + s.masks.tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == _digest(draw_scene(options))


@pytest.mark.parametrize("seed", range(6))
def test_resolved_options_draw_the_very_scene_the_open_ones_do(seed):
    for options in (SceneOptions(seed=seed), SceneOptions(class_name="fish", second_class="tree", seed=seed)):
        drawn = resolve(options)
        open_ones = [f.name for f in fields(SceneOptions) if getattr(drawn, f.name) is None]
        assert open_ones == ([] if options.second_class else ["second_class", "second_glyph"])  # one object
        assert _digest(draw_scene(drawn)) == _digest(draw_scene(options))


def test_explicit_options_are_what_the_scene_shows():
    options = SceneOptions(glyph="u+1f415", x=0.3, y=0.65, scale=0.4, rotation=0, flip=False, distractors=0, seed=1)
    scene = draw_scene(options)
    assert scene.labels == [CLASSES.index("dog")] and scene.glyphs == ["1F415"] and scene.designs == ["openmoji"]
    x, y = _centre(scene.masks[0])
    assert abs(x - 0.3) <= 3 / SIZE and abs(y - 0.65) <= 3 / SIZE
    x0, y0, x1, y1 = scene.boxes[0]
    assert abs(max(x1 - x0, y1 - y0) - 0.4 * SIZE) <= 3


def test_flip_mirrors_the_object_and_rotation_turns_it():
    base = SceneOptions(class_name="horse", x=0.5, y=0.5, scale=0.5, rotation=0, flip=False, distractors=0, seed=3)
    plain = draw_scene(base).masks[0]
    mirrored = draw_scene(replace(base, flip=True)).masks[0]
    overlap = (np.fliplr(plain) & mirrored).sum() / (np.fliplr(plain) | mirrored).sum()
    assert overlap > 0.9 and (plain & mirrored).sum() < 0.95 * plain.sum()
    turned = draw_scene(replace(base, rotation=30)).masks[0]
    assert (turned & plain).sum() / (turned | plain).sum() < 0.9


def test_changing_one_option_leaves_the_other_drawn_values_and_the_background():
    a = SceneOptions(class_name="cat", distractors=0, seed=5)
    b = replace(a, class_name="boat")
    ra, rb = resolve(a), resolve(b)
    assert (ra.scale, ra.rotation, ra.flip, ra.x, ra.y, ra.background) == (
        rb.scale,
        rb.rotation,
        rb.flip,
        rb.x,
        rb.y,
        rb.background,
    )
    sa, sb = draw_scene(a), draw_scene(b)
    beside = distance_to_mask(sa.masks[0] | sb.masks[0]) > 4  # past the objects' anti-aliased rims
    assert np.array_equal(sa.image[beside], sb.image[beside])


def test_each_background_kind_draws_its_own_background():
    images = {
        kind: draw_scene(SceneOptions(background=kind, distractors=0, seed=2)).image
        for kind in ("gradient", "noise", "stripes", "checker", "blobs")
    }
    digests = {kind: hashlib.sha256(image.tobytes()).hexdigest() for kind, image in images.items()}
    assert len(set(digests.values())) == 5
    assert resolve(SceneOptions(background="checker")).background == "checker"


def test_two_objects_have_separate_masks_on_opposite_sides():
    scene = draw_scene(SceneOptions(class_name="dog", second_class="fish", x=0.28, y=0.4, seed=4))
    assert scene.labels == [CLASSES.index("dog"), CLASSES.index("fish")]
    assert not (scene.masks[0] & scene.masks[1]).any() and scene.masks.sum(axis=(1, 2)).min() > 300
    assert scene.glyphs[1] in CLASS_GLYPHS["fish"]
    (x1, y1), (x2, y2) = _centre(scene.masks[0]), _centre(scene.masks[1])
    assert x1 < 0.4 < 0.6 < x2 and abs(y1 + y2 - 1) < 0.1


def test_objects_that_hide_each_other_are_refused_in_one_line():
    options = SceneOptions(
        class_name="fruit",
        second_class="tree",
        glyph="1F34E",
        second_glyph="1F333",
        x=0.5,
        y=0.5,
        scale=0.45,
        distractors=0,
    )
    with pytest.raises(AttnvizError, match="hides") as caught:
        draw_scene(options)
    assert "\n" not in str(caught.value)


def test_distractors_never_hide_more_than_40_percent_of_the_object():
    bare = draw_scene(SceneOptions(class_name="car", distractors=0, seed=9))
    for count in range(1, MAX_DISTRACTORS + 1):
        scene = draw_scene(SceneOptions(class_name="car", distractors=count, seed=9))
        assert scene.masks[0].sum() >= 0.6 * bare.masks[0].sum()


def test_glyph_names_its_class_and_the_seed_fills_in_only_what_is_open():
    options = SceneOptions(glyph="1F41D", x=0.5)
    assert resolve(options).class_name == "insect"
    filled = filled_by_seed(options)
    assert "class_name" not in filled and "x" not in filled and {"y", "scale", "rotation", "flip"} <= set(filled)


# --------------------------------------------------------------------------- one-click changes


def test_moved_moves_the_object_and_nothing_else():
    options = SceneOptions(class_name="bird", seed=6)
    before, after = resolve(options), resolve(moved(options, 1))
    assert np.hypot(after.x - before.x, after.y - before.y) >= MIN_MOVE
    assert replace(after, x=before.x, y=before.y) == before
    assert moved(options, 1) == moved(options, 1) and moved(options, 1) != moved(options, 2)
    assert abs(_centre(draw_scene(moved(options, 1)).masks[0])[0] - after.x) < 0.05


def test_with_distractor_adds_one_and_keeps_the_others_in_place():
    options = SceneOptions(class_name="flower", distractors=1, seed=12)
    more = with_distractor(options)
    assert more.distractors == 2 and replace(more, distractors=1) == options
    changed = np.abs(draw_scene(more).image.astype(int) - draw_scene(options).image.astype(int)).max(axis=2) > 0
    ys, xs = np.nonzero(changed)
    largest = DISTRACTOR_SCALE[1] * SIZE * 2**0.5 + 4  # one rotated distractor's box at most
    assert changed.any() and xs.max() - xs.min() <= largest and ys.max() - ys.min() <= largest
    with pytest.raises(AttnvizError, match="most the lab draws"):
        with_distractor(replace(options, distractors=MAX_DISTRACTORS))


def test_new_background_keeps_a_chosen_kind_and_changes_the_pixels():
    options = SceneOptions(class_name="tree", background="blobs", distractors=0, seed=1)
    fresh = new_background(options)
    assert fresh.background_variant == 1 and resolve(fresh).background == "blobs"
    assert resolve(replace(fresh, background_variant=0)) == resolve(options)
    assert _digest(draw_scene(fresh)) != _digest(draw_scene(options))
    assert resolve(fresh).glyph == resolve(options).glyph


# --------------------------------------------------------------------------- options out of range


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"scale": 0.9}, "scale 0.9 is outside 0.15 to 0.6, the sizes the models were trained on"),
        ({"scale": 0.5, "second_class": "cat"}, "outside 0.25 to 0.45, the sizes of two-object scenes"),
        ({"rotation": -40}, "rotation -40 is outside -35 to 35"),
        ({"x": 1.5}, "x 1.5 is outside 0 to 1"),
        ({"y": float("nan")}, "y nan is outside 0 to 1"),
        ({"class_name": "unicorn"}, "unknown class 'unicorn'"),
        ({"class_name": "dog", "glyph": "1F408"}, "glyph 1F408 is a cat, not a dog"),
        ({"glyph": "1F600"}, "no class's glyph"),
        ({"class_name": "dog", "second_class": "dog"}, "the second object is a dog too"),
        ({"background": "plaid"}, "unknown background kind 'plaid'"),
        ({"distractors": 7}, "distractors 7 is outside 0 to 6"),
        ({"distractors": 2.5}, "distractors 2.5 is not a whole number"),
        ({"seed": -1}, "seed -1 is not a whole number of 0 or more"),
        ({"design": "comic"}, "unknown emoji design 'comic'"),
        ({"flip": "yes"}, "flip 'yes' is not true or false"),
    ],
)
def test_an_out_of_range_option_is_one_line_saying_what_to_choose(change, words):
    options = replace(SceneOptions(class_name="dog"), **change)
    with pytest.raises(SceneOptionsError) as caught:
        draw_scene(options)
    assert caught.value.problems == options.problems() and len(caught.value.problems) == 1
    assert words in caught.value.problems[0] and "\n" not in str(caught.value)
    assert "choose" in caught.value.problems[0] or "designs.sh" in caught.value.problems[0]


def test_every_bad_option_gets_its_own_line():
    options = SceneOptions(scale=0.01, rotation=90, x=-1, background="plaid", distractors=99)
    assert len(options.problems()) == 5


def test_a_design_that_is_not_installed_gets_the_designs_modules_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_DESIGNS", str(tmp_path))
    designs.load.cache_clear()
    try:
        problems = SceneOptions(design="noto").problems()
    finally:
        designs.load.cache_clear()
    assert problems == [f"emoji design 'noto' is not installed in {tmp_path}: {designs.INSTALL_HINT}"]


@pytest.mark.skipif(not designs.installed("noto"), reason="Noto is not installed: bash scripts/designs.sh")
def test_an_installed_design_draws_its_own_glyphs():
    scene = draw_scene(SceneOptions(class_name="dog", design="noto", distractors=2, seed=3))
    assert scene.designs == ["noto"]
    assert _digest(scene) != _digest(draw_scene(SceneOptions(class_name="dog", distractors=2, seed=3)))


# --------------------------------------------------------------------------- one image's localisation


SETTINGS = LocalisationSettings(threshold=0.4, tolerance=15.0, source="test")


def _square() -> np.ndarray:
    mask = np.zeros((100, 100), bool)
    mask[40:60, 40:60] = True
    return mask


def test_pointing_counts_a_peak_within_the_tolerance_of_the_object():
    mask = _square()
    for column, hit in ((50, True), (60 + 14, True), (60 + 16, False)):
        heatmap = np.zeros((100, 100), np.float32)
        heatmap[50, column] = 1.0
        assert scene_metrics(heatmap, mask, SETTINGS).pointing_hit is hit
    assert scene_metrics(np.zeros((100, 100)), mask, SETTINGS).pointing_hit is False  # a flat map points nowhere


def test_energy_in_mask_is_the_share_of_the_maps_mass_on_the_object():
    mask = _square()
    assert scene_metrics(mask.astype(np.float32), mask, SETTINGS).energy_in_mask == pytest.approx(1.0)
    uniform = scene_metrics(np.full((100, 100), 0.5), mask, SETTINGS)
    assert uniform.energy_in_mask == pytest.approx(0.04) and uniform.area_share == pytest.approx(0.04)
    half = np.zeros((100, 100), np.float32)
    half[40:60, 40:80] = 1.0  # 400 px on the object, 400 beside it
    assert scene_metrics(half, mask, SETTINGS).energy_in_mask == pytest.approx(0.5)


def test_mask_iou_takes_the_region_at_or_above_the_threshold_of_the_maximum():
    mask = _square()
    heatmap = np.zeros((100, 100), np.float32)
    heatmap[40:60, 40:60] = 1.0
    heatmap[40:60, 60:80] = 0.45  # above 0.4 of the maximum: in the region, IoU 400 / 800
    assert scene_metrics(heatmap, mask, SETTINGS).mask_iou == pytest.approx(0.5)
    heatmap[40:60, 60:80] = 0.35  # below: out of it
    result = scene_metrics(heatmap, mask, SETTINGS)
    assert result.mask_iou == pytest.approx(1.0)
    assert (result.threshold, result.tolerance, result.source) == (0.4, 15.0, "test")


def test_the_builtin_sets_threshold_and_tolerance_come_from_its_analysis():
    result = json.loads((ROOT / "weights/builtin/analysis/analysis.json").read_text())
    settings = localisation_settings("builtin")
    assert settings.threshold == result["threshold"]["value"] and settings.tolerance == result["config"]["tolerance"]
    assert "analysis.json" in settings.source


def test_a_set_without_an_analysis_uses_the_analysis_defaults_and_says_so(tmp_path):
    from attnviz.analysis.config import AnalysisConfig

    settings = localisation_settings("mine", tmp_path)
    assert settings.threshold == 0.5 and settings.tolerance == AnalysisConfig().tolerance
    assert "no analysis" in settings.source


def test_view_mask_follows_the_sets_resize_and_crop():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:, :112] = True
    assert np.array_equal(view_mask(mask, Preprocessing()), mask)
    zoomed = view_mask(mask, Preprocessing(resize=448, crop=224))  # the centre half, twice as large
    assert zoomed.shape == (224, 224) and zoomed[:, :110].all() and not zoomed[:, 114:].any()


# --------------------------------------------------------------------------- the draw command


def _draw(tmp_path: Path, name: str, *args: str) -> Path:
    out = tmp_path / name
    assert main(["draw", "--out", str(out), *args]) == 0
    return out


def test_draw_writes_the_same_files_for_the_same_options_and_others_for_another_seed(tmp_path):
    args = [
        "--class",
        "dog",
        "--x",
        "0.3",
        "--y",
        "0.6",
        "--scale",
        "0.4",
        "--rotation",
        "10",
        "--flip",
        "--background",
        "stripes",
        "--distractors",
        "2",
        "--seed",
        "7",
    ]
    a, b = _draw(tmp_path, "a", *args), _draw(tmp_path, "b", *args)
    c = _draw(tmp_path, "c", *args[:-1], "8")
    for name in ("scene.png", "mask.png", "scene.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "scene.png").read_bytes() != (c / "scene.png").read_bytes()


def test_draw_records_every_value_the_seed_filled_in_and_those_values_draw_the_same_scene(tmp_path):
    out = _draw(tmp_path, "pair", "--class", "cat", "--second-class", "fish", "--seed", "3")
    assert sorted(p.name for p in out.iterdir()) == ["mask_1.png", "mask_2.png", "scene.json", "scene.png"]
    record = json.loads((out / "scene.json").read_text())
    assert [o["class"] for o in record["objects"]] == ["cat", "fish"]
    assert {"glyph", "second_glyph", "x", "y", "scale", "rotation", "flip", "background"} <= set(
        record["filled_by_seed"]
    )
    options = SceneOptions.from_dict(record["options"])
    scene = draw_scene(options)
    assert [list(box) for box in scene.boxes] == [o["box"] for o in record["objects"]]
    again = _draw(tmp_path, "again", *record["command"].split()[6:])  # the recorded command draws it again
    assert (again / "scene.png").read_bytes() == (out / "scene.png").read_bytes()


def test_draw_masks_are_white_where_the_object_is_visible(tmp_path):
    from PIL import Image

    out = _draw(tmp_path, "one", "--class", "boat", "--seed", "2")
    mask = np.asarray(Image.open(out / "mask.png"))
    assert set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask == 255, draw_scene(SceneOptions(class_name="boat", seed=2)).masks[0])


def test_draw_answers_each_out_of_range_option_in_one_line_with_exit_code_2(tmp_path, capsys):
    code = main(["draw", "--out", str(tmp_path / "bad"), "--scale", "0.9", "--rotation", "50", "--background", "plaid"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "scale 0.9 is outside 0.15 to 0.6" in err[0] and not (tmp_path / "bad").exists()
