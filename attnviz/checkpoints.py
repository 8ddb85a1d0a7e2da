"""Reading checkpoint files without unpickling code, and renaming published layouts to attnviz's module names.

``read_checkpoint`` takes safetensors or a ``.pth`` state dict (``weights_only``); the ``rename_*`` functions map
one source's keys (None: a key attnviz has no place for); ``convert_state_dict`` applies one and checks that every
source tensor is used and every attnviz tensor filled. ``attnviz.importers`` says which source uses which.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from attnviz.errors import AttnvizError
from attnviz.models import ModelSpec, build_model
from attnviz.weights import PICKLE_MAGIC, read_safetensors

# --------------------------------------------------------------------------- reading files


def some(keys: Iterable[str], shown: int = 3) -> str:
    """'a, b, c and 5 more': a short list for a one-line error."""
    keys = list(keys)
    text = ", ".join(keys[:shown])
    return f"{text} and {len(keys) - shown} more" if len(keys) > shown else text


def first_line(exc: BaseException, limit: int = 120) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unwrap(obj: object, origin: str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: the object itself or its 'state_dict' / 'model' entry, 'module.' removed."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise AttnvizError(f"{origin}: holds no state dict (a dict of tensors, maybe under 'state_dict'); "
                           f"save model.state_dict() and try again")
    not_tensors = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if not_tensors:
        raise AttnvizError(f"{origin}: its state dict has entries that are not tensors ({some(not_tensors)}); "
                           f"save model.state_dict() and try again")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def read_checkpoint(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a .pth state dict without unpickling anything but tensors."""
    path = Path(path)
    if not path.is_file():
        raise AttnvizError(f"{path}: no such file; check the path")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not any(head.startswith(magic) for magic in PICKLE_MAGIC):
        return _unwrap(read_safetensors(path), str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise AttnvizError(f"{path}: holds objects that are not plain tensors, and unpickling them could run code, "
                           f"so it is not loaded; save only model.state_dict() or safetensors and try again") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise AttnvizError(f"{path}: cannot be read as a PyTorch checkpoint ({first_line(exc)}); "
                           f"download or copy it again") from None
    return _unwrap(obj, str(path))


def refuse_legacy_seresnet(state: dict[str, torch.Tensor], origin: str) -> None:
    """timm's legacy_seresnet50 (a Caffe port) fits by shape but is another network: refuse it by its key names."""
    if any(k.startswith(("layer0.", "last_linear.")) or ".se_module." in k for k in state):
        raise AttnvizError(f"{origin}: is timm's legacy_seresnet50 (the Caffe port: layer0, se_module, last_linear, "
                           f"stride on the first 1x1 conv), a different network from seresnet50, so it is not loaded; "
                           f"use timm's seresnet50 weights (python -m attnviz.weights import timm-seresnet50)")


# --------------------------------------------------------------------------- key mappings


def rename_torchvision(key: str) -> str | None:
    return key


_TIMM_SE = re.compile(r"(layer\d\.\d+)\.se\.(fc[12]\.(?:weight|bias))")


def rename_timm(key: str) -> str | None:
    match = _TIMM_SE.fullmatch(key)
    return f"{match[1]}.attention.{match[2]}" if match else key


_CV_BLOCK = re.compile(r"features\.stage(\d)\.unit(\d+)\.(.+)")
_CV_INSIDE = [
    (re.compile(r"body\.conv(\d)\.conv\.(weight)"), "conv{0}.{1}"),
    (re.compile(r"body\.conv(\d)\.bn\.(\w+)"), "bn{0}.{1}"),
    (re.compile(r"identity_conv\.conv\.(weight)"), "downsample.0.{0}"),
    (re.compile(r"identity_conv\.bn\.(\w+)"), "downsample.1.{0}"),
    (re.compile(r"cbam\.ch_gate\.mlp\.(fc[12]\.(?:weight|bias))"), "attention.channel_gate.{0}"),
    (re.compile(r"cbam\.sp_gate\.conv\.conv\.(weight)"), "attention.spatial_gate.conv.{0}"),
    (re.compile(r"cbam\.sp_gate\.conv\.bn\.(\w+)"), "attention.spatial_gate.bn.{0}"),
]
_CV_STEM = [
    (re.compile(r"features\.init_block\.conv\.conv\.(weight)"), "conv1.{0}"),
    (re.compile(r"features\.init_block\.conv\.bn\.(\w+)"), "bn1.{0}"),
    (re.compile(r"output\.(weight|bias)"), "fc.{0}"),
]


def _apply(rules: list[tuple[re.Pattern, str]], text: str) -> str | None:
    for pattern, template in rules:
        match = pattern.fullmatch(text)
        if match:
            return template.format(*match.groups())
    return None


def rename_pytorchcv(key: str) -> str | None:
    block = _CV_BLOCK.fullmatch(key)
    if block is None:
        return _apply(_CV_STEM, key)
    inside = _apply(_CV_INSIDE, block[3])
    return f"layer{block[1]}.{int(block[2]) - 1}.{inside}" if inside else None


_OFFICIAL_CBAM = [
    (re.compile(r"(layer\d\.\d+)\.cbam\.ChannelGate\.mlp\.1\.(weight|bias)"), "{0}.attention.channel_gate.fc1.{1}"),
    (re.compile(r"(layer\d\.\d+)\.cbam\.ChannelGate\.mlp\.3\.(weight|bias)"), "{0}.attention.channel_gate.fc2.{1}"),
    (re.compile(r"(layer\d\.\d+)\.cbam\.SpatialGate\.spatial\.conv\.(weight)"), "{0}.attention.spatial_gate.conv.{1}"),
    (re.compile(r"(layer\d\.\d+)\.cbam\.SpatialGate\.spatial\.bn\.(\w+)"), "{0}.attention.spatial_gate.bn.{1}"),
]


def rename_official_cbam(key: str) -> str | None:
    if ".cbam." in key:
        return _apply(_OFFICIAL_CBAM, key)
    return key


def fill_step_counters(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Files saved before PyTorch 0.4.1 have no BatchNorm step counters; eval mode never reads them."""
    for key in expected:
        prefix = key.removesuffix(".num_batches_tracked")
        if key not in state and prefix != key and f"{prefix}.running_mean" in state:
            state[key] = torch.tensor(0, dtype=torch.long)


def convert_state_dict(state: dict[str, torch.Tensor], source: str, rename: Callable[[str], str | None],
                       variant: str, summary: str, origin: str) -> dict[str, torch.Tensor]:
    """Rename the state dict of ``source`` (a ``summary`` checkpoint of ``variant``) to attnviz's names with
    ``rename``; every key must be used and every tensor filled."""
    refuse_legacy_seresnet(state, origin)
    expected = build_model(ModelSpec(variant, 1000)).state_dict()
    converted: dict[str, torch.Tensor] = {}
    unused, wrong_shape = [], []
    for key, value in state.items():
        target = rename(key)
        if target is None or target not in expected or target in converted:
            unused.append(key)
            continue
        want = expected[target].shape
        if value.dim() == 4 and value.shape[2:] == (1, 1) and len(want) == 2:  # 1x1 conv stored for a Linear
            value = value.reshape(value.shape[:2])
        if value.shape != want:
            wrong_shape.append(f"{key} {tuple(value.shape)} vs {target} {tuple(want)}")
            continue
        converted[target] = value
    fill_step_counters(converted, expected)
    unfilled = [k for k in expected if k not in converted]
    problems = []
    if unused:
        problems.append(f"{len(unused)} source keys did not fit ({some(unused)})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} with the wrong shape ({some(wrong_shape, 1)})")
    if unfilled:
        problems.append(f"{len(unfilled)} attnviz tensors were not filled ({some(unfilled)})")
    if problems:
        raise AttnvizError(f"{origin}: does not fit the {source} layout: {'; '.join(problems)}; "
                           f"is it a {summary} checkpoint?")
    return converted
