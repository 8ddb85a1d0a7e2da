"""Model sets on disk: the manifest, safetensors checks before any weight is used, verify and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from attnviz.errors import AttnvizError
from attnviz.models import ModelSpec, build_model
from attnviz.weights import Manifest, ModelEntry, load_model_set, read_safetensors, verify, write_safetensors
from attnviz.weights_cli import main

CLASSES = ["red", "green", "blue"]
SET = "tiny"


@pytest.fixture(scope="module")
def saved_models() -> dict[str, nn.Module]:
    with torch.random.fork_rng():  # seeded here, and the global state left as it was
        torch.manual_seed(0)
        return {variant: build_model(ModelSpec(variant, len(CLASSES))).eval() for variant in ("resnet50", "se")}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, saved_models) -> Path:
    """A weights folder with one set: ResNet50 and ResNet50+SE, three classes. Read-only for the tests."""
    root = tmp_path_factory.mktemp("pristine")
    manifest = Manifest(root)
    for variant, model in saved_models.items():
        file = f"{SET}/{variant}.safetensors"
        sha = write_safetensors(model.state_dict(), root / file, dtype=torch.float32)
        manifest.put_model(SET, ModelEntry(variant, file, sha, CLASSES), description="three colours")
    manifest.data["default_set"] = SET
    manifest.save()
    return root


@pytest.fixture
def weights_dir(pristine, tmp_path) -> Path:
    """A copy of the pristine folder that a test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "weights"))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- loading


def test_round_trip_gives_the_saved_weights_and_classes(pristine, saved_models):
    loaded = load_model_set(SET, weights_dir=pristine)
    assert loaded.classes == CLASSES
    assert set(loaded.models) == {"resnet50", "se"}
    for variant, model in saved_models.items():
        ours = loaded.models[variant].state_dict()
        assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())
        assert not loaded.models[variant].training


def test_load_model_set_loads_only_the_requested_variants(pristine):
    assert set(load_model_set(SET, weights_dir=pristine, variants=["se"]).models) == {"se"}


def test_default_set_is_loaded_without_a_name(pristine):
    assert load_model_set(weights_dir=pristine).name == SET


def test_unknown_set_names_the_installed_ones(pristine):
    with pytest.raises(AttnvizError, match=f"'nope' is not in .*installed: {SET}"):
        load_model_set("nope", weights_dir=pristine)


# --------------------------------------------------------------------------- refusing damaged files


def test_a_folder_without_a_manifest_says_where_it_looked_and_how_to_point_attnviz(tmp_path):
    with pytest.raises(AttnvizError) as caught:
        Manifest(tmp_path / "nowhere").get()
    message = str(caught.value)
    assert str(tmp_path / "nowhere" / "manifest.json") in message and "does not exist" in message
    assert "--weights-dir" in message and "ATTNVIZ_WEIGHTS" in message and "\n" not in message


def test_tampered_file_is_refused_by_sha256(weights_dir):
    flip_last_byte(weights_dir / SET / "se.safetensors")
    with pytest.raises(AttnvizError, match=r"se\.safetensors: sha256 is .*the manifest expects"):
        load_model_set(SET, weights_dir=weights_dir)


def test_truncated_file_is_refused(weights_dir):
    path = weights_dir / SET / "resnet50.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(AttnvizError, match=r"resnet50\.safetensors: is truncated"):
        load_model_set(SET, weights_dir=weights_dir)


def test_pickle_renamed_safetensors_is_refused(weights_dir, saved_models):
    path = weights_dir / SET / "resnet50.safetensors"
    torch.save(saved_models["resnet50"].state_dict(), path)
    with pytest.raises(AttnvizError, match="is a pickle"):
        read_safetensors(path)


def test_missing_file_is_reported_missing(weights_dir):
    (weights_dir / SET / "se.safetensors").unlink()
    with pytest.raises(AttnvizError, match=r"se\.safetensors: weights file is missing"):
        load_model_set(SET, weights_dir=weights_dir)


def test_se_weights_registered_as_cbam_do_not_fit(weights_dir):
    manifest_path = weights_dir / "manifest.json"
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    data["sets"][SET]["models"]["se"]["variant"] = "cbam"
    manifest_path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(AttnvizError, match="do not fit the architecture"):
        load_model_set(SET, weights_dir=weights_dir)


def test_set_refuses_a_model_with_other_classes(weights_dir):
    entry = ModelEntry("cbam", f"{SET}/cbam.safetensors", "0" * 64, ["a", "b"])
    with pytest.raises(AttnvizError, match="classes that differ"):
        Manifest(weights_dir).put_model(SET, entry)


# --------------------------------------------------------------------------- verify and the CLI


def test_verify_reports_ok_for_intact_files(pristine):
    assert verify(Manifest(pristine)) == [(SET, "resnet50", "ok"), (SET, "se", "ok")]


def test_verify_reports_the_error_of_a_damaged_file(weights_dir):
    flip_last_byte(weights_dir / SET / "se.safetensors")
    results = dict(((v, outcome) for _, v, outcome in verify(Manifest(weights_dir), SET)))
    assert results["resnet50"] == "ok"
    assert "sha256" in results["se"]


def test_cli_list_shows_the_set_its_models_and_the_default(pristine, capsys):
    assert main(["list", "--weights-dir", str(pristine)]) == 0
    out = capsys.readouterr().out
    assert f"{SET} (default): three colours" in out
    assert "ResNet50 + SE" in out and "3 classes" in out


def test_cli_verify_exits_0_when_every_file_is_intact(pristine, capsys):
    assert main(["verify", "--weights-dir", str(pristine)]) == 0
    assert f"{SET}/se: ok" in capsys.readouterr().out


def test_cli_verify_exits_1_when_a_file_is_damaged(weights_dir, capsys):
    flip_last_byte(weights_dir / SET / "resnet50.safetensors")
    assert main(["verify", "--set", SET, "--weights-dir", str(weights_dir)]) == 1
    assert f"{SET}/resnet50: " in capsys.readouterr().out


def test_cli_unknown_set_is_one_error_line_with_exit_2(pristine, capsys):
    assert main(["verify", "--set", "nope", "--weights-dir", str(pristine)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model set 'nope'") and err.count("\n") == 1


def test_safetensors_whose_header_length_starts_like_a_pickle_is_read(tmp_path):
    """A header of 640 bytes is written b"\\x80\\x02\\0..." : the bytes of a pickle's protocol-2 opening."""
    import struct

    path = tmp_path / "means.safetensors"
    for pad in range(600):
        write_safetensors({"x": torch.ones(3)}, path, metadata={"pad": "p" * pad})
        if struct.unpack("<Q", path.read_bytes()[:8])[0] == 640:
            break
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert torch.equal(read_safetensors(path)["x"], torch.ones(3))
