"""Emoji designs besides OpenMoji and the version 2 scenes drawn in them.

Tests that draw a real design need the designs installed (bash scripts/designs.sh): they skip without
them, but fail when CI=true, so that CI cannot pass without testing them.
"""

import dataclasses
import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from attnviz import designs
from attnviz.designs import DESIGNS, TRAINING_DESIGNS, UNSEEN_DESIGN
from attnviz.errors import AttnvizError
from attnviz.scenes import CLASS_GLYPHS, CLASSES, DISTRACTOR_GLYPHS, SceneSplit, generate_split, glyphs_for, make_scene

SVG_DESIGNS = [name for name, design in DESIGNS.items() if design.package]


@pytest.fixture
def designs_folder(tmp_path, monkeypatch):
    """An empty designs folder in place of the real one; the real one is back (uncached) afterwards."""
    monkeypatch.setenv("ATTNVIZ_DESIGNS", str(tmp_path / "designs"))
    designs.load.cache_clear()
    yield tmp_path / "designs"
    designs.load.cache_clear()
    designs.render.cache_clear()


# --------------------------------------------------------------------------- a package made in the test


def _fake_package(root, name="@iconify-json/fake", version="1.0.0", licence="MIT"):
    """A tiny Iconify package: a red box named by its Unicode name, a blue one by chars.json, one alias."""
    box = '<path fill="{}" d="M2 2h{}v12H2z"/>'
    icons = {
        "prefix": "fake",
        "width": 16,
        "height": 16,
        "icons": {"dog": {"body": box.format("#f00", 4)}, "kitty": {"body": box.format("#00f", 10)}},
        "aliases": {"pup": {"parent": "dog", "hFlip": True}},
    }
    folder = root / "node_modules" / name
    folder.mkdir(parents=True)
    raw = json.dumps(icons).encode()
    (folder / "icons.json").write_bytes(raw)
    (folder / "chars.json").write_text(json.dumps({"1f408": "kitty", "1f429": "pup"}))
    (folder / "package.json").write_text(json.dumps({"name": name, "version": version}))
    (folder / "info.json").write_text(json.dumps({"license": {"spdx": licence}}))
    return designs.Design(
        "fake", "Fake", "a test", "MIT", "https://example.org", name, "1.0.0", hashlib.sha256(raw).hexdigest()
    )


def test_extract_finds_glyphs_by_chars_and_unicode_name_and_records_the_missing(tmp_path):
    design = _fake_package(tmp_path / "npm")
    path = designs.extract(design, tmp_path / "npm", ["1F415", "1F408", "1F429", "1F984"], tmp_path / "out")
    record = json.loads(path.read_text())
    assert record["glyphs"]["1F415"]["name"] == "dog"  # U+1F415 DOG, by its Unicode name
    assert record["glyphs"]["1F408"]["name"] == "kitty"  # U+1F408 CAT, by the set's own chars.json
    assert record["glyphs"]["1F429"]["name"] == "pup"  # an alias of "dog", mirrored
    assert record["missing"] == ["1F984"]
    assert record["version"] == "1.0.0" and record["icons_sha256"] == design.icons_sha256


@pytest.mark.parametrize(
    ("change", "message"),
    [({"version": "1.0.1"}, "attnviz needs 1.0.0"), ({"licence": "LicenseRef-Proprietary"}, "licence")],
)
def test_extract_refuses_another_version_or_licence_in_one_line(tmp_path, change, message):
    design = _fake_package(tmp_path / "npm", **change)
    with pytest.raises(AttnvizError, match=message) as caught:
        designs.extract(design, tmp_path / "npm", ["1F415"], tmp_path / "out")
    assert "\n" not in str(caught.value)


def test_extract_refuses_an_icons_file_that_does_not_match_its_pinned_sha256(tmp_path):
    design = _fake_package(tmp_path / "npm")
    tampered = dataclasses.replace(design, icons_sha256="0" * 64)
    with pytest.raises(AttnvizError, match="sha256.*scripts/designs.sh"):
        designs.extract(tampered, tmp_path / "npm", ["1F415"], tmp_path / "out")


def test_a_mirrored_alias_renders_as_the_mirror_image_of_its_parent(tmp_path):
    import resvg_py

    icons = {"width": 16, "height": 16}
    icon = {"body": '<path fill="#f00" d="M2 2h4v12H2z"/>'}

    def draw(flip):
        svg = designs.svg_document(icons, icon, flip)
        png = resvg_py.svg_to_bytes(svg_string=svg, width=32, height=32, skip_system_fonts=True)
        return np.asarray(Image.open(io.BytesIO(bytes(png))).convert("RGBA"))

    plain, mirrored = draw(False), draw(True)
    assert plain[..., 3].sum() > 0 and plain[:, :16, 3].sum() > plain[:, 16:, 3].sum()
    assert np.array_equal(mirrored, plain[:, ::-1])


def test_a_missing_design_is_one_line_naming_the_install_script(designs_folder):
    for call in (lambda: designs.load("noto"), lambda: make_scene(0, "test", 0, version=2)):
        with pytest.raises(AttnvizError, match="not installed.*bash scripts/designs.sh") as caught:
            call()
        assert "\n" not in str(caught.value)


def test_generating_v2_without_designs_fails_before_writing_anything(designs_folder, tmp_path):
    with pytest.raises(AttnvizError, match="scripts/designs.sh"):
        generate_split(tmp_path / "scenes", "test", 4, workers=1, progress=False, version=2)
    assert not (tmp_path / "scenes").exists()


def test_attribution_names_each_design_with_its_licence():
    text = designs.attribution()
    for name in SVG_DESIGNS:
        assert f"{DESIGNS[name].title} by {DESIGNS[name].author}" in text and DESIGNS[name].licence in text


def test_the_unseen_design_is_not_a_training_design():
    assert UNSEEN_DESIGN in DESIGNS and UNSEEN_DESIGN not in TRAINING_DESIGNS
    assert set(TRAINING_DESIGNS) | {UNSEEN_DESIGN} == set(DESIGNS) and "openmoji" in TRAINING_DESIGNS
    # Fluent's two styles share their drawings: holding one out while training on the other would not be unseen.
    assert UNSEEN_DESIGN not in ("fluent", "fluent-flat")


# --------------------------------------------------------------------------- the installed designs


def test_every_design_draws_each_glyph_it_has_and_its_class_glyphs_in_colour(installed):
    class_glyphs = {g for glyphs in CLASS_GLYPHS.values() for g in glyphs}
    for name in SVG_DESIGNS:
        grey = []
        for code in sorted(class_glyphs) + list(DISTRACTOR_GLYPHS):
            if not designs.has_glyph(name, code):
                continue
            glyph = np.asarray(designs.render(name, code, 192))
            opaque = glyph[..., 3] > 127
            assert opaque.sum() > 500, (name, code)
            if code in class_glyphs and np.ptp(glyph[opaque][:, :3].astype(int), axis=0).max() <= 40:
                grey.append(code)
        assert len(grey) <= 1, (name, grey)  # Twemoji's ant (U+1F41C) is all one dark grey


def test_every_design_draws_every_class_in_the_splits_it_is_used_in(installed):
    for name in DESIGNS:
        for split in ("train", "unseen") if name in TRAINING_DESIGNS else ("unseen_design",):
            for class_name, glyphs in glyphs_for(split).items():
                assert any(designs.has_glyph(name, g) for g in glyphs), (name, split, class_name)


def test_v2_same_seed_gives_the_same_bytes_twice_and_differs_from_v1(installed):
    for split in ("train", "unseen_design", "pairs"):
        a, b = make_scene(5, split, 17, version=2), make_scene(5, split, 17, version=2)
        assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.masks, b.masks)
        assert a.glyphs == b.glyphs and a.designs == b.designs
    assert make_scene(5, "train", 17, version=2).image.tobytes() != make_scene(5, "train", 17).image.tobytes()


def test_v2_training_splits_draw_every_training_design_in_turn_and_never_the_unseen_one(installed):
    for split in ("train", "val", "test", "unseen"):
        drawn = [make_scene(0, split, i, version=2).designs[0] for i in range(0, 12 * len(TRAINING_DESIGNS), 12)]
        assert sorted(drawn) == sorted(TRAINING_DESIGNS), split
    unseen = [make_scene(0, "unseen_design", i, version=2) for i in range(len(CLASSES))]
    assert all(s.designs == [UNSEEN_DESIGN] for s in unseen)
    assert [s.labels[0] for s in unseen] == list(range(len(CLASSES)))
    for scene in unseen:  # the training glyphs, only the design is new
        assert scene.glyphs[0] in glyphs_for("train")[CLASSES[scene.labels[0]]]


def test_a_chosen_design_draws_the_scene_and_keeps_its_layout(installed):
    scenes = {name: make_scene(0, "test", 30, version=2, design=name) for name in DESIGNS}
    for name, scene in scenes.items():
        assert scene.designs == [name]
    boxes = [scene.boxes[0] for scene in scenes.values()]
    centres = np.array([((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes])
    assert np.ptp(centres, axis=0).max() < 40  # the same scene redrawn: the object stays where it was


@pytest.mark.parametrize("design", SVG_DESIGNS)
def test_v2_mask_covers_exactly_the_pixels_the_object_changed(installed, design):
    split = "unseen_design" if design == UNSEEN_DESIGN else "test"
    for index in range(3):
        scene = make_scene(0, split, index, version=2, design=design)
        bare = make_scene(0, split, index, draw_objects=False, version=2, design=design)
        changed = np.abs(scene.image.astype(int) - bare.image.astype(int)).max(axis=2) > 8
        mask = scene.masks[0]
        assert mask.sum() > 100
        assert (mask & ~changed).sum() <= 0.03 * mask.sum()
        grown = mask.copy()
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                grown |= np.roll(np.roll(mask, dy, 0), dx, 1)
        assert (changed & ~grown).sum() <= 0.02 * mask.sum()


def test_v2_split_on_disk_reads_back_as_the_generator_made_it_and_says_its_designs(installed, tmp_path):
    generate_split(tmp_path, "unseen_design", 3, seed=4, workers=1, progress=False, version=2)
    split = SceneSplit(tmp_path / "unseen_design")
    assert split.meta["version"] == 2 and split.meta["designs"] == [UNSEEN_DESIGN]
    for index in range(3):
        scene = make_scene(4, "unseen_design", index, version=2)
        assert np.array_equal(split.images[index], scene.image)
        assert np.array_equal(split.masks(index), scene.masks)
    assert DESIGNS[UNSEEN_DESIGN].title in split.meta["attribution"]


def test_coverage_lists_the_glyphs_a_design_lacks(installed):
    report = designs.coverage(CLASS_GLYPHS, list(DISTRACTOR_GLYPHS))
    assert report["openmoji"]["lacks"] == [] and report["openmoji"]["class_glyphs"] == "74 of 74"
    # Emoji One 2 (2016) predates Unicode 12's guide dog.
    assert "U+1F9AE guide-dog (dog)" in report["emojione"]["lacks"]
    for name, entry in report.items():
        for line in entry["lacks"]:
            assert not designs.has_glyph(name, line.split()[0][2:])


def test_v2_examples_are_the_v2_test_scenes_named_after_their_classes(installed, tmp_path):
    from attnviz.scenes import export_examples

    paths = export_examples(tmp_path, singles=2, pairs=1, version=2)
    scene = make_scene(7, "test", 1, version=2)
    assert paths[0].name == f"scene_00_{CLASSES[scene.labels[0]]}.png"
    assert np.array_equal(np.asarray(Image.open(paths[0])), scene.image)
    assert "_and_" in paths[-1].name
