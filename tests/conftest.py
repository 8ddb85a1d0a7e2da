"""Shared fixtures: small synthetic model sets and images made on the spot."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The writable weights folder the app reads beside the shipped one (attnviz.weights.user_weights_dir): an empty one
# of this test run's own, so that sets a developer downloaded change nothing the tests see (servers the tests
# start inherit it). Tests that download into one give their own.
os.environ["ATTNVIZ_USER_WEIGHTS"] = tempfile.mkdtemp(prefix="attnviz-user-weights-")

from attnviz.models import VARIANTS, build_resnet50  # noqa: E402
from attnviz.weights import Manifest, ModelEntry, Preprocessing, write_safetensors  # noqa: E402

TINY_CLASSES = ["circle", "square", "triangle", "star"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every BatchNorm parameter and statistic and every bias, so none is trivially 0 or 1."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.2, 0.2)
                uniform(module.running_mean, -0.2, 0.2)
                uniform(module.running_var, 0.5, 1.5)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.mul_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
                if module.bias is not None:
                    uniform(module.bias, -0.2, 0.2)
    return model


def make_model_set(
    weights_dir: Path,
    set_name: str = "tiny",
    classes: list[str] | None = None,
    crop: int = 64,
    variants: tuple[str, ...] = VARIANTS,
    make_default: bool = True,
) -> Path:
    """Register a set of randomly initialised full ResNet50s (few classes, small input) in ``weights_dir``."""
    classes = classes or TINY_CLASSES
    manifest = Manifest(weights_dir)
    if make_default:
        manifest.data["default_set"] = set_name
    for i, variant in enumerate(variants):
        with torch.random.fork_rng():  # the same models whatever ran before: no draw from the global RNG state
            torch.manual_seed(i)
            model = randomise(build_resnet50(variant, num_classes=len(classes)), seed=i).eval()
        file = f"{set_name}/{variant}.safetensors"
        sha = write_safetensors(model.state_dict(), weights_dir / file, dtype=torch.float16)
        entry = ModelEntry(
            variant=variant,
            file=file,
            sha256=sha,
            classes=classes,
            preprocessing=Preprocessing(resize=crop, crop=crop),
            source="random weights (test)",
        )
        manifest.put_model(set_name, entry, description="random test models")
    return weights_dir


def with_domain_threshold(folder: Path, set_name: str, threshold: float, dest: Path) -> Path:
    """A copy of weights ``folder`` in which every model of ``set_name`` keeps its fitted out-of-domain statistics
    but gets ``threshold`` (files re-hashed in the manifest): -1e9 flags every image, 1e9 none."""
    import shutil

    from attnviz.weights import read_domain_model

    copy = dest / "calibrated"
    shutil.copytree(folder, copy)
    manifest = Manifest(copy)
    for entry in manifest.data["sets"][set_name]["models"].values():
        domain = read_domain_model(entry["domain"], copy)
        domain.threshold = threshold
        entry["domain"]["sha256"] = write_safetensors(domain.to_tensors(), copy / entry["domain"]["file"])
        entry["domain"]["threshold"] = threshold
    manifest.save()
    return copy


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory) -> Path:
    """A weights folder holding one random three-model set, "tiny", as the default set."""
    return make_model_set(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def tiny_explainer(tiny_weights_dir):
    from attnviz.explainer import Explainer
    from attnviz.weights import load_model_set

    return Explainer(load_model_set("tiny", tiny_weights_dir))


@pytest.fixture
def scene_image() -> np.ndarray:
    """A 96x96 RGB image: a red disc on a striped background."""
    yy, xx = np.mgrid[0:96, 0:96]
    image = np.zeros((96, 96, 3), np.uint8)
    image[..., 1] = ((xx // 8) % 2) * 120
    image[..., 2] = 80
    disc = (xx - 40) ** 2 + (yy - 50) ** 2 < 20**2
    image[disc] = (220, 30, 30)
    return image


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def installed():
    """The emoji designs of the version 2 scenes (bash scripts/designs.sh): skip without them, fail when CI=true."""
    from attnviz import designs

    absent = [name for name, design in designs.DESIGNS.items() if design.package and not designs.installed(name)]
    if absent:
        message = (
            f"emoji designs {', '.join(absent)} are not installed in {designs.designs_dir()}: {designs.INSTALL_HINT}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def imagenet_caches(tmp_path_factory):
    """Stand-ins for the three ImageNet downloads (tests/standins.py) in library caches of their own:
    (TORCH_HOME, HF_HUB_CACHE, the stand-ins' ``Placed``). Only read by what uses them."""
    pytest.importorskip("timm")
    pytest.importorskip("pytorchcv")
    from standins import place_in_caches, standin_models

    root = tmp_path_factory.mktemp("imagenet-caches")
    placed = place_in_caches(standin_models(), root / "torch-home", root / "hf-cache")
    return root / "torch-home", root / "hf-cache", placed


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No name resolves and no socket connects; library caches point into tmp_path."""
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
