"""Stand-ins for the three ImageNet downloads, made without internet: random-weight models built from the pip
packages (torchvision's resnet50, timm's seresnet50, pytorchcv's cbam_resnet50), saved in each publisher's file
layout, either where each library keeps its downloads or as the files a person downloads by hand.

torch.hub checks a downloaded file's sha256 prefix against its name, so a file server cannot stand in for
torchvision; a file already in its cache is used as it is. pytorchcv checks even a cached file's sha1 against its
table, so a process using the stand-ins must have the stand-in's sha1 put in that table: ``patch_pytorchcv``
(``tests/standin_app.py`` does it for an app server in a subprocess).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from attnviz import importers

PYTORCHCV_SHA1_ENV = "ATTNVIZ_TEST_PYTORCHCV_SHA1"


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and buffer random (BN scales and variances positive), so no mapping mistake can hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("num_batches_tracked"):
                tensor.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))
            elif name.endswith("running_var") or (tensor.dim() == 1 and name.endswith("weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype) + 0.5)
            elif tensor.dim() > 1:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) / math.sqrt(fan_in))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * 0.1)
    return model.eval()


def standin_models(seed: int = 0) -> dict[str, nn.Module]:
    """The three published architectures with random weights, by attnviz source name."""
    import timm
    import torchvision
    from pytorchcv.model_provider import get_model

    return {
        "torchvision-resnet50": randomise(torchvision.models.resnet50(weights=None), seed + 1),
        "timm-seresnet50": randomise(timm.create_model("seresnet50", pretrained=False), seed + 2),
        "pytorchcv-cbam-resnet50": randomise(get_model("cbam_resnet50", pretrained=False), seed + 3),
    }


@dataclass(frozen=True)
class Placed:
    """Where the stand-ins went: each source's file, and the sha1 pytorchcv's table must name."""

    files: dict[str, Path]
    pytorchcv_sha1: str


def _write_all(models: dict[str, nn.Module], paths: dict[str, Path]) -> Placed:
    from safetensors.torch import save_file

    for source, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        state = models[source].state_dict()
        if path.suffix == ".safetensors":
            save_file({k: v.float().contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save(state, path)
    sha1 = hashlib.sha1(paths["pytorchcv-cbam-resnet50"].read_bytes()).hexdigest()
    return Placed(paths, sha1)


def place_in_caches(models: dict[str, nn.Module], torch_home: Path, hf_hub_cache: Path) -> Placed:
    """Each stand-in where its library keeps its downloads: torch.hub's checkpoints (``$TORCH_HOME``), the Hugging
    Face hub cache (``$HF_HUB_CACHE``, one snapshot of timm's repository), pytorchcv's model store in torch.hub's
    folder (named after its sha1, as pytorchcv names a release)."""
    hub = Path(torch_home) / "hub"
    revision = "0" * 40
    repo = Path(hf_hub_cache) / f"models--{importers.TIMM_SE_REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    scratch = hub / "pytorchcv" / "standin.pth"
    placed = _write_all(models, {
        "torchvision-resnet50": hub / "checkpoints" / Path(importers.torchvision_url("V1")).name,
        "timm-seresnet50": repo / "snapshots" / revision / importers.TIMM_SE_FILES[0],
        "pytorchcv-cbam-resnet50": scratch,
    })
    named = scratch.with_name(f"{importers.PYTORCHCV_MODEL}-0000-{placed.pytorchcv_sha1[:8]}.pth")
    scratch.replace(named)
    return Placed({**placed.files, "pytorchcv-cbam-resnet50": named}, placed.pytorchcv_sha1)


def place_as_files(models: dict[str, nn.Module], folder: Path) -> Placed:
    """The three files as a person downloads them, in one folder (``weights import imagenet --files``); the
    torchvision file is not named after a release (its hash is no release's): import it with the release named."""
    return _write_all(models, {
        "torchvision-resnet50": folder / "resnet50-standin.pth",
        "timm-seresnet50": folder / importers.TIMM_SE_FILES[0],
        "pytorchcv-cbam-resnet50": folder / "cbam_resnet50-0000-standin.pth",
    })


def patch_pytorchcv(sha1: str) -> None:
    """Make pytorchcv's table name the stand-in (release "0000", sha1 ``sha1``) for cbam_resnet50."""
    from pytorchcv.models.common import model_store

    real = model_store.get_model_name_suffix_data

    def suffix(name: str):
        return ("0000", sha1, "v0") if name == importers.PYTORCHCV_MODEL else real(name)

    model_store.get_model_name_suffix_data = suffix

