"""The app's ImageNet download: who is offered it, the writable folder read beside the shipped one, one download
for two presses, and what a person sees offline; the downloads are stand-ins in the libraries' caches."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import make_model_set
from standins import patch_pytorchcv

from attnviz import get_imagenet as gi
from attnviz import importers
from attnviz.catalogue import Catalogue, catalogue
from attnviz.errors import AttnvizError
from attnviz.ui import AttnvizApp
from attnviz.weights import Manifest


@pytest.mark.parametrize(("host", "env", "offered"), [
    ("127.0.0.1", {}, True), ("127.0.0.2", {}, True), ("::1", {}, True), ("[::1]", {}, True),
    ("localhost", {}, True), ("0.0.0.0", {}, False), ("192.168.1.5", {}, False), ("example.org", {}, False),
    ("0.0.0.0", {"ATTNVIZ_DOWNLOADS": "1"}, True), ("0.0.0.0", {"ATTNVIZ_DOWNLOADS": "yes"}, True),
    ("127.0.0.1", {"ATTNVIZ_DOWNLOADS": "0"}, False), ("127.0.0.1", {"ATTNVIZ_DOWNLOADS": "off"}, False),
])
def test_the_button_is_offered_on_loopback_and_elsewhere_only_when_allowed(host, env, offered):
    assert gi.downloads_allowed(host, env) is offered


def test_an_unknown_downloads_setting_is_one_line():
    with pytest.raises(AttnvizError, match="ATTNVIZ_DOWNLOADS='maybe': use 1 .* 0 .* unset"):
        gi.downloads_allowed("127.0.0.1", {"ATTNVIZ_DOWNLOADS": "maybe"})


def test_the_writable_folder_is_read_beside_the_shipped_one(tmp_path, monkeypatch):
    shipped, writable = tmp_path / "shipped", tmp_path / "writable"
    make_model_set(shipped, "tiny", variants=("resnet50",))
    make_model_set(writable, "mine", classes=["a", "b"], variants=("se",))
    make_model_set(writable, "tiny", classes=["x", "y"], variants=("cbam",), make_default=False)  # hidden
    monkeypatch.setenv("ATTNVIZ_USER_WEIGHTS", str(writable))
    sets = catalogue(shipped)
    assert sets.set_names() == ["tiny", "mine"]
    assert sets.default_set == "tiny"  # the shipped folder's
    assert sets.folder("tiny") == shipped and sets.folder("mine") == writable
    assert list(sets.get("tiny").models) == ["resnet50"] and sets.get("mine").classes == ["a", "b"]
    assert sets.writable_dir == writable
    with pytest.raises(AttnvizError, match=r"model set 'other' is not installed \(installed: tiny, mine\)"):
        sets.get("other")
    make_model_set(writable, "later", variants=("resnet50",), make_default=False)  # e.g. another process
    assert "later" not in sets.set_names()
    sets.reload()
    assert sets.set_names() == ["tiny", "mine", "later"]
    assert Catalogue([shipped, shipped]).folders == [shipped]  # one folder named twice is read once


def test_the_app_lists_and_runs_a_set_of_the_writable_folder(tmp_path, monkeypatch, scene_image):
    shipped, writable = tmp_path / "shipped", tmp_path / "writable"
    make_model_set(shipped, "tiny", variants=("resnet50",))
    make_model_set(writable, "mine", classes=["a", "b"], variants=("se",))
    monkeypatch.setenv("ATTNVIZ_USER_WEIGHTS", str(writable))
    app = AttnvizApp(shipped)
    assert app.set_names == ["tiny", "mine"]
    analysis = app.analyse(scene_image, "mine")
    assert list(analysis.explanation.results) == ["se"] and analysis.explanation.classes == ["a", "b"]


@pytest.fixture
def downloading_app(tmp_path, monkeypatch):
    """An app offering downloads, with a one-model "tiny" set shipped and an empty writable folder:
    (app, shipped folder, writable folder)."""
    shipped, writable = tmp_path / "shipped", tmp_path / "writable"
    make_model_set(shipped, "tiny", variants=("resnet50",))
    monkeypatch.setenv("ATTNVIZ_USER_WEIGHTS", str(writable))
    app = AttnvizApp(shipped, downloads=True)
    app.build()
    return app, shipped, writable


def test_a_set_installed_after_the_start_is_offered_to_pages_and_the_api(downloading_app):
    app, _, writable = downloading_app
    c = app.components
    assert c["get_imagenet"].visible is True  # offered: no ImageNet set
    make_model_set(writable, "later", variants=("resnet50",), make_default=False)
    values = app.page_loaded()
    assert values[c["model_set"]].choices == [("tiny", "tiny"), ("later", "later")]
    assert values[c["get_imagenet"]].visible is True
    # the server checks a request's set against the component's own choices (the API's requests too)
    assert c["model_set"].preprocess("later") == "later"


def test_without_downloads_the_button_is_hidden_and_its_event_refused(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    make_model_set(shipped, "tiny", variants=("resnet50",))
    app = AttnvizApp(shipped)  # downloads=False: what serve gives a public address
    app.build()
    c = app.components
    assert c["get_imagenet"].visible is False
    refused = app.get_imagenet_page(progress=lambda *a, **k: None)
    assert "imagenet_off" in refused[c["status"]]  # the page's text: the server does not download
    assert not (tmp_path / "writable").exists()


def test_offline_the_button_says_so_at_once_and_installs_nothing(downloading_app, offline):
    app, _, writable = downloading_app
    c = app.components
    started = time.perf_counter()
    with pytest.warns(UserWarning, match="needs internet"):  # gr.Warning outside a request is a warning
        values = app.get_imagenet_page(progress=lambda *a, **k: None)
    assert time.perf_counter() - started < 5
    status = values[c["status"]]
    assert status.startswith("⚠️") and "needs internet" in status and "\n" not in status
    assert Manifest(writable).set_names() == [] and app.set_names == ["tiny"]


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    make_model_set(tmp_path / "shipped", "tiny", variants=("resnet50",))
    sets = Catalogue([tmp_path / "shipped", blocker / "weights"])
    with pytest.raises(AttnvizError, match="cannot write the ImageNet models to .*ATTNVIZ_USER_WEIGHTS"):
        gi.get_imagenet(sets)


@pytest.fixture
def standin_caches(imagenet_caches, monkeypatch):
    """The stand-in downloads in the caches this process's libraries read, pytorchcv's table naming its file."""
    import huggingface_hub.constants
    from pytorchcv.models.common import model_store

    torch_home, hf_cache, placed = imagenet_caches
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(model_store, "get_model_name_suffix_data", model_store.get_model_name_suffix_data)
    patch_pytorchcv(placed.pytorchcv_sha1)  # undone by the line above at the end of the test
    return placed


@pytest.mark.slow
def test_two_presses_at_once_give_one_download_and_the_set_in_the_selector(tmp_path, monkeypatch,
                                                                           standin_caches):
    shipped, writable = tmp_path / "shipped", tmp_path / "writable"
    make_model_set(shipped, "tiny", variants=("resnet50",))
    monkeypatch.setenv("ATTNVIZ_USER_WEIGHTS", str(writable))
    calls, real = [], importers.import_imagenet

    def counted(*args, **kwargs):
        calls.append(kwargs.get("weights_dir"))
        time.sleep(0.5)  # the second press arrives while the first downloads
        return real(*args, **kwargs)

    monkeypatch.setattr(importers, "import_imagenet", counted)
    app = AttnvizApp(shipped, downloads=True)
    app.build()
    c = app.components
    said: list[list[str]] = [[], []]
    results: list[dict | None] = [None, None]

    def press(i: int) -> None:
        results[i] = app.get_imagenet_page(progress=lambda fraction, desc: said[i].append(desc))

    threads = [threading.Thread(target=press, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(600)
    assert calls == [writable]  # one download, into the writable folder
    assert Manifest(writable).get("imagenet").models.keys() == {"resnet50", "se", "cbam"}
    assert Manifest(shipped).set_names() == ["tiny"]  # the shipped folder is not written to
    statuses = sorted(r[c["status"]] for r in results)
    assert any("imagenet_ready" in s for s in statuses) and any("imagenet_there" in s for s in statuses)
    assert any("waiting for it" in line for line in said[1])
    assert any("downloaded" in line for line in said[0]) and any("installed" in line for line in said[0])
    for result in results:
        assert result[c["model_set"]].value == "imagenet"
        assert result[c["model_set"]].choices == [("tiny", "tiny"), ("imagenet", "imagenet")]
        assert result[c["get_imagenet"]].visible is False
    assert app.page_loaded()[c["get_imagenet"]].visible is False  # installed: no longer offered
    assert len(app.sets.get("imagenet").classes) == 1000
    manifest = json.loads((writable / "manifest.json").read_text())
    assert manifest["sets"]["imagenet"]["models"]["cbam"]["source"].startswith("pytorchcv cbam_resnet50")


@pytest.mark.slow
def test_import_imagenet_from_a_folder_of_downloaded_files(tmp_path, imagenet_caches):
    from standins import place_as_files, standin_models

    from attnviz.weights_cli import main

    place_as_files(standin_models(), tmp_path / "files")
    assert main(["import", "imagenet", "--files", str(tmp_path / "files"), "--torchvision-weights", "V1",
                 "--weights-dir", str(tmp_path / "weights")]) == 0
    info = Manifest(tmp_path / "weights").get("imagenet")
    assert set(info.models) == {"resnet50", "se", "cbam"} and len(info.classes) == 1000
    assert "not a known pytorchcv release" in info.models["cbam"].source  # a stand-in claims no accuracy


def test_a_folder_of_files_missing_one_says_which(tmp_path):
    (tmp_path / "resnet50-0676ba61.pth").write_bytes(b"x")
    (tmp_path / "a-seresnet50.pth").write_bytes(b"x")
    (tmp_path / "b-seresnet50.bin").write_bytes(b"x")
    with pytest.raises(AttnvizError) as caught:
        importers.imagenet_files(tmp_path)
    line = str(caught.value)
    assert "timm-seresnet50: several files named" in line and "(a-seresnet50.pth, b-seresnet50.bin)" in line
    assert "pytorchcv-cbam-resnet50: no file named cbam_resnet50-*.pth" in line
    assert "torchvision-resnet50:" not in line and "\n" not in line
