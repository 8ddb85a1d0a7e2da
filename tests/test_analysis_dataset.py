"""``python -m attnviz.analyze --images DIR --masks DIR``: the analysis on a folder of the user's images, each with a
mask PNG. Scenes made by the project's own scene code are written out as such a folder (as a user would have them,
in subfolders, with masks in several PNG modes, beside files that cannot be measured), and the folder's numbers
are checked against the scene analysis of the same scenes with the same settings: they are equal, interval for
interval, because the images go through the same loading, preprocessing, mask resizing and measuring code."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CLASSES, make_model_set
from PIL import Image

from attnviz.analysis import cli as analysis_cli
from attnviz.analysis import config as analysis_config
from attnviz.analysis.dataset import FolderSource, Found, Pair, find_pairs, pair_mask, read_labels, read_mask
from attnviz.errors import AttnvizError
from attnviz.scenes import CLASSES, make_scene
from attnviz.weights import Preprocessing

SCENES = 3  # test scenes 0..2, written out as images
GOOD = ["a/scene-0.png", "a/scene-1.png", "b/scene-2.png"]  # their paths under the images folder, in path order
BAD = {  # image -> the words its one line must contain
    "c/broken.jpg": "truncated or corrupt",
    "c/bad-mask.png": "not a PNG Pillow can read",
    "c/empty-mask.png": "has no nonzero pixel",
    "c/no-mask.png": "no mask",
    "c/outside.png": "outside the model's view",
    "c/wrong-size.png": "is 100x100 px, the image 224x224 px",
}
# The same settings for the scene run and the folder run: the threshold is given (the scene run would choose it on
# val scenes, the folder run on held-out images), and every section that takes "the first" test scenes takes all
# of them (the folder run's subsets are drawn at random, which for all of them is all of them).
COMMON = ["--quiet", "--threshold", "0.5", "--faithfulness", str(SCENES), "--knockout-scenes", str(SCENES),
          "--knockout-value", "identity", "--sanity-scenes", "0", "--methods", "gradcam",
          "--layers", "layer3", "layer4", "--steps", "2", "--road-percentiles", "50", "--resamples", "50",
          "--workers", "0", "--batch-size", "2"]


def save_mask(mask: np.ndarray, path: Path, mode: str) -> None:
    """A bool mask as a PNG in ``mode``: binary, greyscale 0/255 or a palette image whose object index is 7."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "1":
        Image.fromarray(mask).convert("1").save(path)
    elif mode == "L":
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    else:
        image = Image.fromarray(mask.astype(np.uint8) * 7, "P")
        image.putpalette([0, 0, 0] * 7 + [200, 30, 30] + [0, 0, 0] * 248)
        image.save(path)


def write_folder(root: Path) -> tuple[Path, Path, Path]:
    """Test scenes 0..2 as an images folder and a masks folder (same relative paths, .png), a labels CSV naming
    their classes (by name and by index, with and without the extension), and one file of each kind the folder
    run must skip."""
    images, masks = root / "images", root / "masks"
    labels = ["file,class"]
    for index, (name, mode) in enumerate(zip(GOOD, ("1", "L", "P"), strict=True)):
        scene = make_scene(analysis_config.SCENE_SEED, "test", index)
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(images / name)
        save_mask(scene.masks[0], masks / name, mode)
        label = CLASSES[scene.labels[0]]
        labels.append([f"{name},{label}", f"{name.removesuffix('.png')},{CLASSES.index(label)}",
                       f"./{name},{label}"][index])
    picture = make_scene(analysis_config.SCENE_SEED, "val", 0).image
    (images / "c").mkdir()
    (images / "c" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    save_mask(np.ones((224, 224), bool), masks / "c" / "broken.png", "L")
    for name in ("bad-mask", "empty-mask", "no-mask", "wrong-size"):
        Image.fromarray(picture).save(images / "c" / f"{name}.png")
    (masks / "c" / "bad-mask.png").write_bytes(b"not a PNG")
    save_mask(np.zeros((224, 224), bool), masks / "c" / "empty-mask.png", "L")
    save_mask(np.ones((100, 100), bool), masks / "c" / "wrong-size.png", "L")
    wide = np.concatenate([picture, picture], axis=1)  # 448 x 224: the set's centre crop keeps the middle half
    Image.fromarray(wide).save(images / "c" / "outside.png")
    corner = np.zeros((224, 448), bool)
    corner[100:120, 430:445] = True  # at the right edge, outside the crop
    save_mask(corner, masks / "c" / "outside.png", "L")
    (images / "c" / "notes.txt").write_text("not an image: not looked at\n")
    labels += [f"{name},{CLASSES[0]}" for name in BAD] + [f"gone.png,{CLASSES[0]}"]
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    return images, masks, root / "labels.csv"


@pytest.fixture(scope="module")
def scene_set(tmp_path_factory) -> Path:
    """Two random ResNet50s (plain and CBAM: channel and spatial gates) that know the scene classes, at 64 px."""
    return make_model_set(tmp_path_factory.mktemp("scene-set"), "scenes", classes=CLASSES, crop=64,
                          variants=("resnet50", "cbam"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path, Path]:
    return write_folder(tmp_path_factory.mktemp("user-data"))


def run(argv: list[str]) -> tuple[int, str]:
    """The command's exit status and what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = analysis_cli.main(argv)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def folder_run(scene_set, folder, tmp_path_factory):
    """The scene analysis of test scenes 0..2, then the folder analysis of the same scenes written out as files
    (to the default folder beside the set), with its stderr lines."""
    images, masks, labels = folder
    common = ["--set", "scenes", "--weights-dir", str(scene_set), *COMMON]
    scene_out = tmp_path_factory.mktemp("scene-run")
    assert analysis_cli.main([*common, "--out", str(scene_out), "--test", str(SCENES), "--unseen", "0",
                              "--pairs", "0"]) == 0
    scenes = json.loads((scene_out / analysis_config.JSON_NAME).read_text())
    code, err = run([*common, "--images", str(images), "--masks", str(masks), "--labels", str(labels)])
    out = scene_set / "scenes" / "analysis-data-images-partial"  # fewer methods than the default: -partial
    return code, err, out, json.loads((out / analysis_config.JSON_NAME).read_text()), scenes


# --------------------------------------------------------------------------- the folder against the scenes


@pytest.mark.slow
def test_a_folder_of_the_scenes_gives_the_scene_analysis_numbers(folder_run):
    code, _, _, result, scenes = folder_run
    assert code == 0
    assert result["data"]["measured"] == GOOD
    for part in ("localisation", "accuracy", "faithfulness", "excitation", "spatial", "threshold"):
        assert result[part] == scenes[part], part
    assert result["area_share"]["test"] == scenes["area_share"]["test"]
    assert result["knockout"]["models"] == scenes["knockout"]["models"] != {}
    assert result["localisation"]["test"]["energy"]["gradcam@layer4"]["n"] == SCENES


@pytest.mark.slow
def test_each_file_that_cannot_be_measured_gets_one_line_and_the_rest_goes_on(folder_run):
    code, err, _, result, _ = folder_run
    assert code == 0
    lines = err.strip().splitlines()
    for name, words in BAD.items():
        mine = [line for line in lines if line.startswith(f"skipped {name}: ")]
        assert len(mine) == 1 and words in mine[0], (name, mine)
    assert not any("notes.txt" in line for line in lines)
    assert any(line.startswith("note: ") and "'gone.png'" in line for line in lines)  # a label naming no image
    assert {s["file"] for s in result["data"]["skipped"]} == set(BAD)
    assert result["data"]["files"] == len(GOOD) + len(BAD) and result["data"]["usable"] == len(GOOD)


@pytest.mark.slow
def test_scene_only_parts_are_skipped_with_a_line_and_the_report_says_whose_data_it_is(folder_run):
    _, err, out, result, _ = folder_run
    assert "skipping the unseen-glyph scenes: scene-only" in err
    assert "skipping the two-object scenes: scene-only" in err
    assert set(result["skipped"]) == {"unseen", "pairs"} and not result["pairs"]
    assert "unseen" not in result["localisation"]
    text = (out / analysis_config.MARKDOWN_NAME).read_text()
    data = result["data"]
    assert data["images"] in text and data["masks"] in text
    assert f"{len(GOOD) + len(BAD)} image files, {len(GOOD)} usable, {len(BAD)} skipped" in text
    assert f"covers on average {result['area_share']['test']:.3f} of the model's view" in text
    assert "the IoU threshold is given, so every usable image is measured" in text
    assert "## Summary: the images, Grad-CAM at layer4" in text and "## Localisation: the images (n = 3)" in text
    assert "## Skipped images" in text
    assert "**Not measured here**: unseen-glyph scenes (scene-only" in text
    assert result["target"].startswith("the class given for each image in ")
    assert set(result["plots"]) >= {"localisation.png", "faithfulness.png", "knockout.png", "spatial.png"}


# --------------------------------------------------------------------------- any set, top-1, held-out threshold


@pytest.fixture(scope="module")
def top1_run(folder, tmp_path_factory):
    """A set that does not know the scene classes (like an imported ImageNet set) on the same folder, without
    labels (each model explains its own top-1) and without --threshold (chosen on held-out images)."""
    images, masks, _ = folder
    weights = make_model_set(tmp_path_factory.mktemp("other-set"), "other", classes=TINY_CLASSES, crop=64,
                             variants=("resnet50",))
    out = weights / "report"
    code, err = run([
        "--set", "other", "--weights-dir", str(weights), "--images", str(images), "--masks", str(masks),
        "--out", str(out), "--quiet", "--methods", "gradcam", "--layers", "layer4", "--faithfulness", "1",
        "--steps", "2", "--road-percentiles", "50", "--resamples", "20", "--workers", "0",
        "--sanity-scenes", "0", "--knockout-scenes", "2"])  # sanity: over 2 min for one image and model here
    return code, err, out, json.loads((out / analysis_config.JSON_NAME).read_text())


@pytest.mark.slow
def test_any_set_explains_its_own_top1_and_chooses_the_threshold_on_held_out_images(top1_run):
    code, err, out, result = top1_run
    assert code == 0
    data = result["data"]
    assert len(data["held_out"]) == 1 and len(data["measured"]) == 2  # 20 % of 3, at least 1
    assert sorted(data["held_out"] + data["measured"]) == GOOD
    assert "held out at random" in result["threshold"]["chosen_on"]
    assert result["threshold"]["value"] in result["threshold"]["grid"]
    assert result["localisation"]["test"]["iou"]["gradcam@layer4"]["n"] == 2
    assert "test" not in result["accuracy"] and result["target"].startswith("each model's own top-1 class")
    assert "skipping the knock-out section: it measures accuracy against each image's true class" in err
    assert "knockout" in result["skipped"] and not result["knockout"]["models"]
    assert "sanity" not in result["skipped"]  # it explains the predicted class: it needs no labels
    text = (out / analysis_config.MARKDOWN_NAME).read_text()
    assert "No accuracy: each model explains its own top-1 class" in text
    assert "1 held out at random (seed 0) to choose the IoU threshold and not measured" in text


@pytest.mark.slow
def test_the_analysis_tab_shows_a_run_on_the_users_images_of_an_imported_set(top1_run, tmp_path):
    """The tab tells an imported set's user to run the analysis on their images with --out <set>/analysis: that
    run's results then show there, like the scenes' analysis of the built-in set."""
    import gradio as gr

    from attnviz.analysis_view import build_analysis_tab

    _, _, out, result = top1_run
    weights = out.parent
    shutil.copytree(out, weights / "other" / analysis_config.ANALYSIS_DIR)
    with gr.Blocks():
        shown = build_analysis_tab(weights, "other")
    status = shown["status"].value
    assert "other classes than the generated scenes" not in status, status
    assert f"`other`: 2 images of `{result['data']['images']}` (1 held out for the IoU threshold)" in status
    assert shown["plots"], "no plot of the run is shown"
    assert result["target"].startswith("each model's own top-1 class")


# --------------------------------------------------------------------------- photos turned by their EXIF orientation


def _turned_photo(folder: Path, name: str, orientation: int) -> np.ndarray:
    """A 48x32 photo stored with an L-shaped red object and the given EXIF orientation; its mask drawn on the
    stored pixels (what the object covers before the turn)."""
    stored = np.zeros((32, 48), bool)
    stored[8:24, 18:22] = stored[20:24, 18:34] = True  # an L: every turn and mirror of it differs
    pixels = np.full((32, 48, 3), 230, np.uint8)
    pixels[stored] = (220, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(folder / name, exif=exif)
    return stored


def _shown_object(path: Path) -> np.ndarray:
    """Where the red object is in the image as attnviz shows it (loaded, turned by its EXIF orientation)."""
    from attnviz.images import load_image

    shown = np.asarray(load_image(path))
    return (shown[..., 0] > 150) & (shown[..., 1] < 100)


def test_a_mask_drawn_on_the_stored_pixels_of_a_turned_photo_is_turned_with_it(tmp_path):
    """Orientations 5-8 swap width and height: a mask of the stored size was drawn on the stored pixels and is
    turned as the image is; 2-4 keep the size, so the mask fits both ways: taken as drawn on the image as shown
    (with a note), or turned with --masks-on-stored-pixels; a mask drawn on the image as shown is used as it is."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for orientation in range(2, 9):
        stored = _turned_photo(images, f"o{orientation}.png", orientation)
        Image.fromarray(stored).save(masks / f"o{orientation}.png")
    _turned_photo(images, "drawn_as_shown.png", 6)
    Image.fromarray(_shown_object(images / "drawn_as_shown.png")).save(masks / "drawn_as_shown.png")
    view = Preprocessing(resize=32, crop=32)
    for stored_pixels in (False, True):
        found = find_pairs(images, masks, view, TINY_CLASSES, stored_pixels=stored_pixels)
        assert found.skipped == [] and len(found.pairs) == 8
        for pair in found.pairs:
            expected = _shown_object(pair.image)
            turned = pair.name in {"o5.png", "o6.png", "o7.png", "o8.png"} or (
                stored_pixels and pair.name in {"o2.png", "o3.png", "o4.png"})
            assert (pair.orientation != 1) == turned, pair.name
            if turned or pair.name == "drawn_as_shown.png":
                assert np.array_equal(pair_mask(pair), expected), pair.name  # on the object as the model sees it
            else:  # fits both ways and taken as drawn on the image as shown: here it was not, and it shows
                assert not np.array_equal(pair_mask(pair), expected) and pair_mask(pair).shape == expected.shape
        assert len(found.notes) == 1 and found.notes[0].startswith(
            "3 image(s) are turned or mirrored on display by their EXIF orientation and their masks fit either way "
            "(first: o2.png); the masks are ")
        assert ("--masks-on-stored-pixels" in found.notes[0]) and (stored_pixels == ("turned with" in found.notes[0]))


def test_a_mask_that_fits_a_turned_photo_neither_way_is_skipped(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _turned_photo(images, "p.png", 6)
    Image.fromarray(np.ones((40, 40), bool)).save(masks / "p.png")
    found = find_pairs(images, masks, Preprocessing(resize=32, crop=32), TINY_CLASSES)
    assert found.pairs == [] and found.skipped == [("p.png", (
        f"its mask {masks / 'p.png'} is 40x40 px, the image 32x48 px (as shown, after its EXIF orientation); give "
        f"a mask of the image's size"))]


# --------------------------------------------------------------------------- the command's errors


@pytest.mark.parametrize(("options", "message"), [
    (["--images", "x"], "error: --images needs --masks"),
    (["--masks", "x"], "error: --masks needs --images"),
    (["--labels", "x.csv"], "error: --labels, --val-share and --masks-on-stored-pixels go with --images DIR"),
    (["--masks-on-stored-pixels"], "error: --labels, --val-share and --masks-on-stored-pixels go with --images DIR"),
])
def test_images_and_masks_go_together(options, message, capsys):
    assert analysis_cli.main(options) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_a_folder_without_a_usable_pair_is_one_error_after_the_lines_of_its_files(tiny_weights_dir, tmp_path,
                                                                                 capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    masks.mkdir()
    for name in ("one.png", "two.png"):
        (images / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (64, 64), "white").save(images / name)
    argv = ["--weights-dir", str(tiny_weights_dir), "--images", str(images), "--masks", str(masks)]
    assert analysis_cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["skipped one.png", "skipped two.png"]
    assert len(lines) == 3 and lines[2].startswith(f"error: no usable image with a mask in {images}")
    (images / "one.png").unlink()
    (images / "two.png").unlink()
    assert analysis_cli.main(argv) == 2
    assert "0 image file(s) found; looked for .png, .jpg" in capsys.readouterr().err


def test_a_folder_of_images_without_masks_names_the_first_files_and_counts_the_rest(tiny_weights_dir, tmp_path,
                                                                                   capsys):
    """A wrong --masks folder: not a line per image, the first SKIP_LINES named and the rest counted."""
    from attnviz.analysis.config import SKIP_LINES

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(SKIP_LINES + 3):
        Image.new("RGB", (32, 32), "white").save(images / f"p{i:02d}.png")
    argv = ["--weights-dir", str(tiny_weights_dir), "--images", str(images), "--masks", str(masks)]
    assert analysis_cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:SKIP_LINES]] == [f"skipped p{i:02d}.png" for i in range(SKIP_LINES)]
    assert lines[SKIP_LINES].startswith("... and 3 more skipped image files (a run that measures lists each")
    assert len(lines) == SKIP_LINES + 2 and lines[-1].startswith(f"error: no usable image with a mask in {images}")


def test_the_output_folder_is_named_after_the_images_folder(tiny_weights_dir):
    parse = analysis_cli._parser().parse_args
    base = ["--weights-dir", str(tiny_weights_dir), "--images", "data/My Photos", "--masks", "data/masks"]
    folder = tiny_weights_dir / "tiny"
    for options, expected in (([], "analysis-data-My_Photos"), (["--quick"], "analysis-data-My_Photos-quick"),
                              (["--test", "10"], "analysis-data-My_Photos-partial"),
                              (["--methods", "gradcam"], "analysis-data-My_Photos-partial")):
        args = parse([*base, *options])
        config = analysis_cli.config_from_args(args)
        assert analysis_cli.output_dir(args, config, ["resnet50", "se", "cbam"]) == folder / expected


# --------------------------------------------------------------------------- masks, labels, samples


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I;16"])
def test_a_mask_is_nonzero_in_any_mode(mode, tmp_path):
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    values = mask.astype(np.uint8) * 3
    if mode == "1":
        image = Image.fromarray(mask)
    elif mode in ("L", "P"):
        image = Image.fromarray(values, mode)
    elif mode == "I;16":
        image = Image.fromarray(values.astype(np.uint16) * 1000)  # mode I;16
    else:
        colour = np.stack([np.zeros_like(values), values, np.zeros_like(values)], axis=-1)
        if mode == "LA":
            colour = np.stack([values, np.full_like(values, 255)], axis=-1)
        elif mode == "RGBA":  # the alpha channel is ignored: opaque background is not object
            colour = np.concatenate([colour, np.full_like(values, 255)[..., None]], axis=-1)
        image = Image.fromarray(colour, mode)
    image.save(tmp_path / "mask.png")
    assert np.array_equal(read_mask(tmp_path / "mask.png"), mask)


def test_labels_match_paths_with_or_without_extension_and_refuse_a_malformed_row(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("\ufefffile,class\na/x.jpg,dog\n./b/y,3\n\na/x.jpg,cat\n", encoding="utf-8")
    assert read_labels(path) == {"a/x.jpg": (2, "dog"), "b/y": (3, "3")}  # a file named twice: its first row
    path.write_text("a/x.jpg\n")
    with pytest.raises(AttnvizError, match="row 1: expected 'file,class'"):
        read_labels(path)


def test_a_bad_label_skips_its_image_with_the_row_and_the_classes(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    Image.new("RGB", (64, 64), "white").save(images / "x.png")
    save_mask(np.ones((64, 64), bool), masks / "x.png", "L")
    (tmp_path / "labels.csv").write_text("x.png,zebra\n")
    found = find_pairs(images, masks, Preprocessing(resize=64, crop=64), TINY_CLASSES, tmp_path / "labels.csv")
    assert not found.pairs and found.skipped[0][0] == "x.png"
    assert "labels.csv row 1: target class 'zebra' is not a class of this set" in found.skipped[0][1]
    (tmp_path / "labels.csv").write_text("x.png,2\n")
    found = find_pairs(images, masks, Preprocessing(resize=64, crop=64), TINY_CLASSES, tmp_path / "labels.csv")
    assert [p.target for p in found.pairs] == [2]


def test_held_out_images_and_section_subsets_are_drawn_at_random_with_the_seed():
    found = Found(files=10, pairs=[Pair(Path(f"{i}.png"), Path(f"m/{i}.png"), f"{i:02d}.png", None)
                                   for i in range(10)])
    config = analysis_config.AnalysisConfig()
    source = FolderSource(Path("images"), Path("masks"), None, found, Preprocessing(), config)
    held, measured = source.splits["val"], source.splits["test"]
    assert len(held) == 2 and len(measured) == 8 and not {p.name for p in held} & {p.name for p in measured}
    assert [p.name for p in measured] == sorted(p.name for p in measured)  # path order
    assert set(source.sample(3)) <= set(source.sample(5)) and source.sample(8) == list(range(8))
    again = FolderSource(Path("images"), Path("masks"), None, found, Preprocessing(), config)
    assert [p.name for p in again.splits["val"]] == [p.name for p in held] and again.sample(3) == source.sample(3)
    other = FolderSource(Path("images"), Path("masks"), None, found, Preprocessing(),
                         analysis_config.AnalysisConfig(seed=1))
    assert [p.name for p in other.splits["val"]] != [p.name for p in held] or other.sample(3) != source.sample(3)
    fixed = FolderSource(Path("images"), Path("masks"), None, found, Preprocessing(),
                         analysis_config.AnalysisConfig(threshold=0.4), limit=4)
    assert not fixed.splits["val"] and len(fixed.splits["test"]) == 4
    assert fixed.config(config).faithfulness == 4 and fixed.config(config).unseen == 0
    with pytest.raises(AttnvizError, match="give --threshold"):
        FolderSource(Path("images"), Path("masks"), None, Found(files=1, pairs=found.pairs[:1]), Preprocessing(),
                     config)
