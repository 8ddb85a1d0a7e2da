"""The ``attnviz`` command: batch explain into one folder per image and a self-contained report.html."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnviz.cli import find_images, main
from attnviz.models import VARIANTS

ATTNVIZ = Path(sys.executable).parent / "attnviz"  # the console script that `pip install -e .` put beside python
RUN_TIMEOUT_S = 1800  # a ceiling, not a wait: on a machine busy training, one run of three ResNet50s takes minutes


def write_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Two valid images (one in a subfolder), one broken .png and a text file that is not an image."""
    folder = tmp_path_factory.mktemp("cli") / "photos"
    write_image(folder / "a.png", (80, 72), seed=1)
    write_image(folder / "sub" / "b.jpg", (64, 64), seed=2)
    (folder / "broken.png").write_bytes(b"this is text, not a PNG")
    (folder / "notes.txt").write_text("not an image, and not named like one", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def first_run(image_folder, tiny_weights_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The installed ``attnviz`` command over the folder, with every model of the tiny set."""
    assert ATTNVIZ.is_file(), f"{ATTNVIZ} is missing: install the package with pip install -e ."
    out = tmp_path_factory.mktemp("cli-out") / "results"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "GRADIO_ANALYTICS_ENABLED": "False"}
    result = subprocess.run([str(ATTNVIZ), "explain", str(image_folder), "--weights-dir", str(tiny_weights_dir),
                             "--out", str(out)], capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
    return result, out


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- one end-to-end run of the command


@pytest.mark.slow
def test_folder_with_a_broken_file_exits_1_and_says_why(first_run):
    result, _ = first_run
    assert result.returncode == 1, result.stderr
    assert "3 images: 2 explained, 0 skipped, 1 failed" in result.stdout
    failed = [line for line in result.stdout.splitlines() if line.startswith("failed")]
    assert len(failed) == 1
    assert "photos/broken.png" in failed[0] and "not an image file" in failed[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_each_valid_image_gets_its_pictures_and_summary(first_run):
    _, out = first_run
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["photos__a.png", "photos__sub__b.jpg"]
    for folder in folders:
        summary = json.loads((out / folder / "summary.json").read_text(encoding="utf-8"))
        assert list(summary["models"]) == list(VARIANTS)
        assert all(len(model["top"]) == 4 for model in summary["models"].values())  # the tiny set has 4 classes
        for name in ("view.png", "cbam_overlay.png", "se_channel_weights.png", "cbam_spatial_maps.png",
                     "agreement.png"):
            assert name in summary["files"]
            assert Image.open(out / folder / name).format == "PNG"


@pytest.mark.slow
def test_report_loads_nothing_from_outside(first_run):
    html = (first_run[1] / "report.html").read_text(encoding="utf-8")
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert references
    assert not [r for r in references if re.match(r"(?i)(https?:)?//", r)]
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "<script" not in html and "@import" not in html and "url(" not in html


@pytest.mark.slow
def test_report_embeds_every_picture_as_a_data_uri(first_run):
    out = first_run[1]
    html = (out / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]* src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    for folder in ("photos__a.png", "photos__sub__b.jpg"):
        for name in ("view.png", "resnet50_overlay.png", "se_overlay.png", "cbam_spatial_maps.png"):
            assert (out / folder / name).read_bytes() in embedded
    assert Image.open(io.BytesIO(next(iter(embedded)))).size[0] > 0


@pytest.mark.slow
def test_report_lists_the_failed_file_with_its_reason(first_run):
    html = (first_run[1] / "report.html").read_text(encoding="utf-8")
    failed = html[html.index('id="failed"'):]
    assert "photos/broken.png" in failed and "not an image file" in failed
    assert "notes.txt" not in html


@pytest.mark.slow
def test_rerun_skips_finished_images(first_run, image_folder, tiny_weights_dir, tmp_path, capsys):
    out = shutil.copytree(first_run[1], tmp_path / "results")
    written = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    code, stdout, _ = run_cli(capsys, "explain", str(image_folder), "--weights-dir", str(tiny_weights_dir),
                              "--out", str(out))
    assert code == 1  # the broken file still fails
    assert "3 images: 0 explained, 2 skipped, 1 failed" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")} == written


# --------------------------------------------------------------------------- in-process runs on one image


@pytest.mark.slow
def test_changed_settings_explain_the_image_again(image_folder, tiny_weights_dir, tmp_path, capsys):
    image = str(image_folder / "a.png")
    common = ["explain", image, "--weights-dir", str(tiny_weights_dir), "--models", "resnet50", "--out",
              str(tmp_path)]
    assert run_cli(capsys, *common)[0] == 0
    code, stdout, _ = run_cli(capsys, *common, "--layer", "layer3")
    assert code == 0 and "1 image: 1 explained, 0 skipped" in stdout
    summary = json.loads((tmp_path / "a.png" / "summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["layer"] == "layer3" and list(summary["models"]) == ["resnet50"]
    assert "1 image: 0 explained, 1 skipped" in run_cli(capsys, *common, "--layer", "layer3")[1]
    code, stdout, _ = run_cli(capsys, *common, "--layer", "layer3", "--precision", "bf16")
    summary = json.loads((tmp_path / "a.png" / "summary.json").read_text(encoding="utf-8"))
    assert code == 0 and "1 explained" in stdout and summary["settings"]["precision"] == "bf16"


@pytest.mark.slow
def test_target_class_by_name_is_the_class_every_map_explains(image_folder, tiny_weights_dir, tmp_path, capsys):
    code, _, _ = run_cli(capsys, "explain", str(image_folder / "a.png"), "--weights-dir", str(tiny_weights_dir),
                         "--models", "resnet50", "--target", "star", "--out", str(tmp_path))
    summary = json.loads((tmp_path / "a.png" / "summary.json").read_text(encoding="utf-8"))
    assert code == 0 and summary["models"]["resnet50"]["target"]["name"] == "star"


# --------------------------------------------------------------------------- errors and the other commands


def test_unknown_model_set_exits_2_with_one_line(image_folder, tiny_weights_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "explain", str(image_folder), "--weights-dir", str(tiny_weights_dir),
                           "--set", "nope", "--out", str(tmp_path / "out"))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "'nope'" in err
    assert not (tmp_path / "out").exists()


def test_unknown_target_class_exits_2_with_one_line(image_folder, tiny_weights_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "explain", str(image_folder), "--weights-dir", str(tiny_weights_dir),
                           "--target", "giraffe", "--out", str(tmp_path))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "giraffe" in err


def test_bad_option_value_exits_2_with_one_line(image_folder, tmp_path, capsys):
    code, _, err = run_cli(capsys, "explain", str(image_folder), "--method", "nonsense", "--out", str(tmp_path))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "--method" in err


def test_folder_without_images_exits_2(tmp_path, tiny_weights_dir, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "explain", str(tmp_path / "empty"), "--weights-dir", str(tiny_weights_dir),
                           "--out", str(tmp_path / "out"))
    assert code == 2 and "no image files" in err


def test_missing_file_is_listed_as_failed_without_loading_models(tmp_path, tiny_weights_dir, capsys):
    code, stdout, _ = run_cli(capsys, "explain", str(tmp_path / "gone.png"), "--weights-dir", str(tiny_weights_dir),
                              "--out", str(tmp_path / "out"))
    assert code == 1
    assert "failed   gone.png:" in stdout and "no such file" in stdout
    assert "gone.png" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


def test_output_folder_inside_the_images_folder_is_not_searched(tmp_path):
    write_image(tmp_path / "a.png", (40, 40), seed=3)
    write_image(tmp_path / "out" / "photos__a.png" / "view.png", (40, 40), seed=4)
    (tmp_path / "readme.md").write_text("no image", encoding="utf-8")
    jobs = find_images([tmp_path], tmp_path / "out")
    assert [job.path for job in jobs] == [tmp_path / "a.png"]


def test_images_with_the_same_name_get_separate_folders(tmp_path):
    for folder in ("x", "y"):
        write_image(tmp_path / folder / "a.png", (40, 40), seed=5)
    jobs = find_images([tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"], tmp_path / "out")
    assert [job.folder for job in jobs] == ["a.png", "a.png-2"]


def test_weights_subcommand_is_python_m_attnviz_weights(tiny_weights_dir, capsys):
    code, stdout, _ = run_cli(capsys, "weights", "list", "--weights-dir", str(tiny_weights_dir))
    assert code == 0 and stdout.startswith("tiny (default)")
