"""The real app, launched by app.py on a free local port with the tiny set, driven over HTTP with gradio_client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from servers import REPO, STARTUP_TIMEOUT_S, running_app

from attnviz.attention import family
from attnviz.images import load_image, preprocess
from attnviz.models import VARIANTS
from attnviz.weights import Manifest


@pytest.fixture(scope="module")
def app_url(tiny_weights_dir) -> Iterator[str]:
    with running_app(tiny_weights_dir) as url:
        yield url


@pytest.fixture
def client(app_url):
    from gradio_client import Client

    return Client(app_url, analytics_enabled=False, verbose=False)


def solid_image(path: Path, colour: tuple[int, int, int], size: int = 80) -> Path:
    image = np.zeros((size, size, 3), np.uint8)
    image[...] = colour
    image[size // 4 : size // 2, size // 4 : size // 2] = 255 - np.array(colour, np.uint8)  # not flat: CAMs vary
    Image.fromarray(image).save(path)
    return path


def view_of(path: Path, weights_dir: Path) -> np.ndarray:
    """The preprocessed view the tiny set's models see for an image file."""
    return preprocess(load_image(path), Manifest(weights_dir).get("tiny").preprocessing).view


@pytest.mark.slow
def test_explain_endpoint_answers_with_only_the_image(client, tmp_path):
    from gradio_client import handle_file

    summary, images, archive = client.predict(handle_file(str(solid_image(tmp_path / "a.png", (200, 30, 30)))),
                                              archive=True, api_name="/explain")
    assert summary["set"] == "tiny"
    assert list(summary["models"]) == list(VARIANTS)
    assert summary["settings"]["method"] == "gradcam" and summary["settings"]["layer"] == "layer4"
    # the tiny set has no out-of-domain statistics: both levels say "not calibrated"
    assert summary["out_of_domain"] is None
    assert all(m["domain_score"] is None and m["out_of_domain"] is None for m in summary["models"].values())
    assert [item["caption"] for item in images] == ["view", *(f"{v}: {family(v).title}" for v in VARIANTS)]
    with zipfile.ZipFile(archive) as opened:
        assert "heatmaps.npz" in opened.namelist() and "summary.json" in opened.namelist()


@pytest.mark.slow
def test_explain_endpoint_follows_the_options(client, tmp_path):
    from gradio_client import handle_file

    summary, images, _ = client.predict(
        handle_file(str(solid_image(tmp_path / "b.png", (30, 200, 30)))), models=["se", "cbam"], method="layercam",
        target="square", layer="layer3", opacity=0.3, colormap="viridis", api_name="/explain")
    assert list(summary["models"]) == ["se", "cbam"]
    assert summary["settings"]["method"] == "layercam" and summary["settings"]["layer"] == "layer3"
    assert {m["target"]["name"] for m in summary["models"].values()} == {"square"}
    assert summary["render"] == {"colormap": "viridis", "opacity": 0.3}
    assert len(images) == 3


@pytest.mark.slow
def test_explain_endpoint_runs_the_sanity_check_when_asked(client, tmp_path):
    from gradio_client import handle_file

    summary, images, _ = client.predict(handle_file(str(solid_image(tmp_path / "s.png", (40, 90, 200)))),
                                        models=["resnet50"], sanity=True, api_name="/explain")
    check = summary["sanity"]
    assert check["method"] == "gradcam" and check["layer"] == "layer4" and check["steps"][:2] == ["original", "fc"]
    model = check["models"]["resnet50"]
    assert len(model["spearman"]) == len(model["ssim"]) == len(check["steps"]) and model["spearman"][0] == 1.0
    assert model["edges"]["spearman"] == [1.0] * len(check["steps"])  # the edge map ignores the model
    assert model["passes"] == (model["spearman"][-1] < 0.5)
    assert images[-1]["caption"] == "sanity check"


@pytest.mark.slow
def test_explain_endpoint_takes_a_knockout_and_answers_with_the_gates_off(client, tmp_path):
    from gradio_client import handle_file

    summary, images, _ = client.predict(
        handle_file(str(solid_image(tmp_path / "k.png", (30, 30, 200)))), models=["resnet50", "cbam"],
        knockout="layer4.*:spatial", knockout_value="identity", api_name="/explain")
    assert summary["settings"]["knockout"] == "layer4.*:spatial"
    assert summary["models"]["cbam"]["knockout"]["gates"] == ["layer4.0:spatial", "layer4.1:spatial",
                                                               "layer4.2:spatial"]
    assert summary["models"]["resnet50"]["knockout"]["affected"] is False
    assert [item["caption"] for item in images][-1] == "cbam: ResNet50 + CBAM, layer4.*:spatial off"


@pytest.mark.slow
def test_explain_endpoint_reports_a_file_that_is_not_an_image(client, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "notes.png"
    bad.write_text("these are notes, not pixels")
    with pytest.raises(Exception, match="not an image file"):
        client.predict(handle_file(str(bad)), api_name="/explain")


def test_upload_over_20_mb_is_refused(app_url, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(21 * 2**20))
    with big.open("rb") as fh:
        answer = httpx.post(app_url + "gradio_api/upload", files={"files": ("big.png", fh, "image/png")}, timeout=60)
    assert answer.status_code == 413


def test_files_outside_the_app_are_not_served(app_url):
    assert httpx.get(app_url + "gradio_api/file=/etc/passwd", timeout=10).status_code == 403


def test_rest_route_outside_the_queue_is_closed(app_url):
    answer = httpx.post(app_url + "gradio_api/run/explain", json={"data": [None]}, timeout=10)
    assert answer.status_code == 404


@pytest.mark.slow
def test_concurrent_clients_each_get_their_own_result(app_url, tiny_weights_dir, tiny_explainer, tmp_path):
    from gradio_client import Client, handle_file

    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
    paths = [solid_image(tmp_path / f"c{i}.png", colour, size=70 + 10 * i) for i, colour in enumerate(colours)]

    def ask(path: Path):
        client = Client(app_url, analytics_enabled=False, verbose=False)
        return client.predict(handle_file(str(path)), archive=True, api_name="/explain")

    with ThreadPoolExecutor(len(paths)) as pool:
        answers = list(pool.map(ask, paths))
    for path, (summary, images, archive) in zip(paths, answers, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(images[0]["image"]).convert("RGB")),
                                      view_of(path, tiny_weights_dir))
        with zipfile.ZipFile(archive) as opened:
            heatmaps = np.load(opened.open("heatmaps.npz"))
            assert json.loads(opened.read("summary.json"))["models"] == summary["models"]
        np.testing.assert_array_equal(heatmaps["view"], view_of(path, tiny_weights_dir))
        alone = tiny_explainer.explain(path, top_k=4)
        for variant, result in alone.results.items():
            np.testing.assert_allclose(heatmaps[variant], result.heatmap, atol=1e-3)


@pytest.mark.slow
def test_concurrent_clients_sending_the_same_image_all_get_complete_files(app_url, tiny_weights_dir, tmp_path):
    """A class clicking the same example at once: identical results must not overwrite each other's files while
    they download (gradio writes arrays to a path named by their hash; attnviz hands it files of its own)."""
    from gradio_client import Client, handle_file

    path = solid_image(tmp_path / "same.png", (200, 120, 30))

    def ask(_: int):
        client = Client(app_url, analytics_enabled=False, verbose=False, download_files=str(tmp_path / "downloads"))
        return [client.predict(handle_file(str(path)), models=["resnet50"], api_name="/explain") for _ in range(3)]

    with ThreadPoolExecutor(4) as pool:
        answers = [answer for batch in pool.map(ask, range(4)) for answer in batch]
    assert len(answers) == 12
    for _, images, archive in answers:
        assert archive is None
        np.testing.assert_array_equal(np.asarray(Image.open(images[0]["image"]).convert("RGB")),
                                      view_of(path, tiny_weights_dir))


@pytest.mark.slow
def test_app_py_without_model_sets_prints_one_line_and_exits_non_zero(tmp_path):
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, "app.py", "--weights-dir", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: no model set is installed")
