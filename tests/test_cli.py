"""The ``attnviz`` command: batch explain into one folder per image and a paged report that opens from disk."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnviz.batch import COMPARISON_WIDTH, find_images
from attnviz.cli import main
from attnviz.models import VARIANTS

ATTNVIZ = Path(sys.executable).parent / "attnviz"  # the console script that `pip install -e .` put beside python
RUN_TIMEOUT_S = 1800  # a ceiling, not a wait: on a machine busy training, one run of three ResNet50s takes minutes
REPORT_BYTES_PER_IMAGE = 300_000  # the report's pages and the previews they show, per image, on average


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


def report_pages(out: Path) -> list[Path]:
    """The index and every page of images, in page order."""
    pages = sorted(out.glob("report-*.html"), key=lambda p: int(re.findall(r"[0-9]+", p.name)[0]))
    return [out / "report.html", *pages]


def image_sources(page: Path) -> list[str]:
    return re.findall(r'<img[^>]* src="([^"]*)"', page.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_report_loads_nothing_from_outside(first_run):
    for page in report_pages(first_run[1]):
        html = page.read_text(encoding="utf-8")
        references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
        assert references
        assert not [r for r in references if re.match(r"(?i)(https?:|file:)?//", r) or r.startswith("/")]
        assert "http://" not in html and "https://" not in html
        assert "<link" not in html and "<script" not in html and "@import" not in html and "url(" not in html


@pytest.mark.slow
def test_report_shows_webp_previews_linked_to_the_full_size_pngs(first_run):
    out = first_run[1]
    html = (out / "report-1.html").read_text(encoding="utf-8")
    linked = re.findall(r'<a href="([^"]+)"[^>]*><img[^>]* src="([^"]+)" width="([0-9]+)" height="([0-9]+)"', html)
    assert len(linked) == len(image_sources(out / "report-1.html"))  # every picture on the page is linked
    for full, preview, width, height in linked:
        assert full.endswith(".png") and preview == full[:-len(".png")] + ".webp"
        with Image.open(out / preview) as small, Image.open(out / full) as large:
            assert small.format == "WEBP" and large.format == "PNG"
            assert small.size == (int(width), int(height))
            assert small.width <= min(large.width, COMPARISON_WIDTH)
    shown = {preview for _, preview, _, _ in linked}
    for folder in ("photos__a.png", "photos__sub__b.jpg"):
        for name in ("view", "resnet50_overlay", "se_overlay", "se_channel_weights", "cbam_spatial_maps",
                     "agreement"):
            assert f"{folder}/{name}.webp" in shown


@pytest.mark.slow
def test_report_takes_at_most_300_kb_per_image(first_run):
    out = first_run[1]
    pages = report_pages(out)
    previews = {source for page in pages for source in image_sources(page)}
    assert previews and all(not source.startswith("data:") for source in previews)
    size = sum(page.stat().st_size for page in pages) + sum((out / source).stat().st_size for source in previews)
    images = len([p for p in out.iterdir() if p.is_dir()])
    assert images == 2 and size / images <= REPORT_BYTES_PER_IMAGE


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


@pytest.mark.slow
def test_a_batch_redone_in_the_same_run_counts_what_it_finished_as_done(image_folder, tiny_weights_dir, tmp_path):
    """A Ray batch redone after its worker died finds the images that worker wrote: explained in this run, not
    "finished earlier"; the next run of the command skips them."""
    from attnviz.batch import explain_group, prepare_run
    from attnviz.cli import _explain_parser

    out, paths = tmp_path / "out", [image_folder / "a.png", image_folder / "sub" / "b.jpg"]
    argv = [*map(str, paths), "--weights-dir", str(tiny_weights_dir), "--models", "resnet50", "--out", str(out)]
    run = prepare_run(_explain_parser().parse_args(argv))
    jobs = find_images(paths, out)
    explain_group(jobs[:1], run, out, force=False)  # the worker that died had finished a.png
    redone = find_images(paths, out)
    explain_group(redone, run, out, force=False)
    assert [job.status for job in redone] == ["done", "done"]
    later = find_images(paths, out)
    explain_group(later, prepare_run(_explain_parser().parse_args(argv)), out, force=False)
    assert [job.status for job in later] == ["skipped", "skipped"]


def test_a_ray_worker_writes_under_the_drivers_invocation(image_folder, tiny_weights_dir, tmp_path):
    """Each worker loads its own copy of the run; the results it writes carry the driver's invocation, so that a
    batch redone on another worker counts them as done (the actor class is built around a stand-in for Ray)."""
    from types import SimpleNamespace

    from attnviz.batch import prepare_run
    from attnviz.cli import _explain_parser
    from attnviz.distributed import _worker_class, absolute_args

    stand_in = SimpleNamespace(remote=lambda cls: cls, get_gpu_ids=lambda: [],
                               get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: "node"))
    argv = [str(image_folder / "a.png"), "--weights-dir", str(tiny_weights_dir), "--models", "resnet50",
            "--out", str(tmp_path / "out")]
    args = _explain_parser().parse_args(argv)
    driver = prepare_run(args)
    worker_args = absolute_args(args)
    worker_args.invocation = driver.invocation
    worker = _worker_class(stand_in)(worker_args)
    assert {k: v for k, v in worker.ready().items() if k != "pid"} == {"node": "node", "device": "cpu", "note": None}
    assert worker.run.invocation == driver.invocation != prepare_run(args).invocation


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


@pytest.mark.slow
def test_report_pages_hold_each_image_once_and_the_index_links_every_one(tiny_weights_dir, tmp_path, capsys):
    for i in range(5):
        write_image(tmp_path / "many" / f"img{i}.png", (48, 40), seed=10 + i)
    out = tmp_path / "out"
    common = ["explain", str(tmp_path / "many"), "--weights-dir", str(tiny_weights_dir), "--models", "resnet50",
              "--out", str(out)]
    code, stdout, _ = run_cli(capsys, *common, "--per-page", "2")
    assert code == 0 and "index and 3 pages" in stdout
    pages = [p.name for p in report_pages(out)[1:]]
    assert pages == ["report-1.html", "report-2.html", "report-3.html"]
    on_page = {page: re.findall(r'<section class="image" id="([^"]+)"', (out / page).read_text(encoding="utf-8"))
               for page in pages}
    assert [len(images) for images in on_page.values()] == [2, 2, 1]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert sorted(sum(on_page.values(), [])) == folders  # every image on exactly one page
    index = (out / "report.html").read_text(encoding="utf-8")
    links = re.findall(r'href="(report-[0-9]+\.html)#([^"]+)"', index)
    assert sorted(folder for _, folder in links) == folders
    assert all(folder in on_page[page] for page, folder in links)
    assert set(re.findall(r'href="(report-[0-9]+\.html)"', index)) == set(pages)

    code, stdout, _ = run_cli(capsys, *common, "--per-page", "5")  # fewer pages: the ones left over go
    assert code == 0 and "0 explained, 5 skipped" in stdout
    assert [p.name for p in report_pages(out)[1:]] == ["report-1.html"]
    assert len(re.findall(r'<section class="image"', (out / "report-1.html").read_text(encoding="utf-8"))) == 5


@pytest.mark.slow
def test_output_redirected_to_a_file_has_one_line_per_image_and_no_bar(image_folder, tiny_weights_dir, tmp_path):
    log = tmp_path / "log.txt"
    # as with: attnviz explain ... > log.txt 2>&1
    with log.open("w", encoding="utf-8") as stream, redirect_stdout(stream), redirect_stderr(stream):
        code = main(["explain", str(image_folder / "a.png"), str(tmp_path / "gone.png"), "--weights-dir",
                     str(tiny_weights_dir), "--models", "resnet50", "--out", str(tmp_path / "out")])
    lines = log.read_text(encoding="utf-8").split("\n")
    assert code == 1 and "\r" not in log.read_text(encoding="utf-8")
    assert lines[0].startswith("done     a.png -> ") and lines[1].startswith("failed   gone.png: ")
    assert lines[2].startswith("2 images: 1 explained, 0 skipped, 1 failed; report: ") and lines[3:] == [""]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.slow
def test_progress_bar_is_drawn_on_a_terminal_apart_from_the_lines(image_folder, tiny_weights_dir, tmp_path, capsys):
    terminal = _Terminal()
    with redirect_stderr(terminal):
        code = main(["explain", str(image_folder / "a.png"), "--weights-dir", str(tiny_weights_dir), "--models",
                     "resnet50", "--out", str(tmp_path)])
    stdout = capsys.readouterr().out
    assert code == 0 and "explaining" in terminal.getvalue() and "1/1" in terminal.getvalue()
    assert stdout.startswith("done     a.png -> ") and "explaining" not in stdout


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


def test_per_page_below_1_exits_2_with_one_line(image_folder, tmp_path, capsys):
    code, _, err = run_cli(capsys, "explain", str(image_folder), "--per-page", "0", "--out", str(tmp_path / "out"))
    assert code == 2 and err.startswith("error: --per-page") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


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


def test_an_image_named_like_a_report_page_gets_another_folder(tmp_path):
    jobs = find_images([tmp_path / "report-1.html", tmp_path / "REPORT.html"], tmp_path / "out")
    assert [job.folder for job in jobs] == ["report-1.html-2", "REPORT.html-2"]


def test_weights_subcommand_is_python_m_attnviz_weights(tiny_weights_dir, capsys):
    code, stdout, _ = run_cli(capsys, "weights", "list", "--weights-dir", str(tiny_weights_dir))
    assert code == 0 and stdout.startswith("tiny (default)")


# --------------------------------------------------------------------------- knock-out


def test_knockout_shows_each_model_with_the_gates_off_in_the_folder_and_the_report(capsys, tiny_weights_dir,
                                                                                  tmp_path):
    image = write_image(tmp_path / "in" / "one.png", (64, 64), seed=4)
    out = tmp_path / "out"
    code, _, _ = run_cli(capsys, "explain", str(image), "--weights-dir", str(tiny_weights_dir), "--out", str(out),
                         "--models", "resnet50", "cbam", "--knockout", "layer4.*:spatial", "--layer", "layer3.5")
    assert code == 0
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["settings"]["knockout"] == "layer4.*:spatial" and summary["settings"]["layer"] == "layer3.5"
    cbam, plain = summary["models"]["cbam"]["knockout"], summary["models"]["resnet50"]["knockout"]
    assert cbam["gates"] == ["layer4.0:spatial", "layer4.1:spatial", "layer4.2:spatial"] and cbam["affected"]
    assert not plain["affected"] and (folder / "cbam_knockout_overlay.png").is_file()
    assert not (folder / "resnet50_knockout_overlay.png").exists()
    page = "".join(p.read_text() for p in out.glob("report-*.html"))
    assert page.count("With layer4.*:spatial switched off (identity)") == 2 and "unaffected" in page


def test_a_bad_knockout_spec_is_one_line_before_any_image(capsys, tiny_weights_dir, tmp_path):
    image = write_image(tmp_path / "x.png", (64, 64), seed=5)
    code, stdout, stderr = run_cli(capsys, "explain", str(image), "--weights-dir", str(tiny_weights_dir),
                                   "--out", str(tmp_path / "out"), "--knockout", "layer7:channel")
    assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1
    assert "knock-out 'layer7:channel' is not valid" in stderr and not (tmp_path / "out").exists()


def test_a_batch_writes_what_one_image_at_a_time_writes(tiny_weights_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    for i in range(4):
        write_image(folder / f"p{i}.png", (64 + 8 * i, 72), seed=10 + i)
    (folder / "broken.png").write_bytes(b"not a PNG")  # fails alone; the rest of its batch goes on
    outs = {}
    for batch in ("3", "1"):
        outs[batch] = tmp_path / f"out{batch}"
        code, out, _ = run_cli(capsys, "explain", str(folder), "--weights-dir", str(tiny_weights_dir), "--out",
                               str(outs[batch]), "--batch-size", batch)
        assert code == 1 and out.count("done ") == 4 and "broken.png: not an image file" in out
    for i in range(4):
        batched, single = (json.loads((outs[b] / f"photos__p{i}.png" / "summary.json").read_text()) for b in ("3", "1"))
        for variant in VARIANTS:
            a, b = batched["models"][variant], single["models"][variant]
            assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
            assert a["target"]["probability"] == pytest.approx(b["target"]["probability"], abs=1e-5)
            overlays = [np.asarray(Image.open(outs[k] / f"photos__p{i}.png" / f"{variant}_overlay.png"), np.int16)
                        for k in ("3", "1")]
            assert np.abs(overlays[0] - overlays[1]).max() <= 2  # the same heatmap, up to rounding in the colours


def test_batch_size_below_1_exits_2_with_one_line(image_folder, tmp_path, capsys):
    code, _, err = run_cli(capsys, "explain", str(image_folder), "--out", str(tmp_path / "o"), "--batch-size", "0")
    assert code == 2 and "--batch-size must be at least 1" in err and len(err.strip().splitlines()) == 1
