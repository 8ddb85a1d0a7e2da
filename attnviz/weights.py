"""Model sets: the manifest, verified safetensors checkpoints, and loading them.

``weights/manifest.json`` names model sets; each set holds up to three models
(ResNet50, +SE, +CBAM) with their classes, preprocessing, file, sha256, source
and measured accuracy. Loading checks the hash, refuses pickle files, and
checks that every tensor fits the architecture before any weight is used.

    python -m attnviz.weights list
    python -m attnviz.weights verify [--set NAME]
    python -m attnviz.weights import SOURCE [--file PATH] --set NAME
    python -m attnviz.weights add FILE --variant V --classes FILE.txt --set NAME
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from attnviz.errors import AttnvizError
from attnviz.models import VARIANTS, ModelSpec, build_model

MANIFEST_NAME = "manifest.json"
BUILTIN_SET = "builtin"
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def default_weights_dir() -> Path:
    """$ATTNVIZ_WEIGHTS, else the repository's weights/ folder next to the package."""
    env = os.environ.get("ATTNVIZ_WEIGHTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "weights"


@dataclass
class Preprocessing:
    """How an image becomes the model's input: resize the short side, centre-crop, normalise."""

    resize: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            resize=int(data.get("resize", 224)),
            crop=int(data.get("crop", 224)),
            mean=tuple(data.get("mean", cls.mean)),
            std=tuple(data.get("std", cls.std)),
            interpolation=data.get("interpolation", "bilinear"),
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


@dataclass
class ModelEntry:
    """One model of a set, as the manifest describes it."""

    variant: str
    file: str
    sha256: str
    classes: list[str]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    attention: dict = field(default_factory=dict)
    source: str = ""
    accuracy: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_options(self.variant, len(self.classes), self.attention)

    @property
    def input_size(self) -> int:
        return self.preprocessing.crop

    def to_dict(self, classes_ref: str | list[str] | None = None) -> dict:
        out = {
            "variant": self.variant,
            "attention": self.attention,
            "classes": classes_ref if classes_ref is not None else self.classes,
            "input_size": self.input_size,
            "preprocessing": self.preprocessing.to_dict(),
            "file": self.file,
            "sha256": self.sha256,
            "source": self.source,
            "accuracy": self.accuracy,
        }
        out.update(self.extra)
        return out


@dataclass
class ModelSet:
    name: str
    description: str
    models: dict[str, ModelEntry]  # keyed by variant
    extra: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return next(iter(self.models.values())).classes

    @property
    def preprocessing(self) -> Preprocessing:
        """The one view every model of the set sees (the first model's preprocessing)."""
        return next(iter(self.models.values())).preprocessing


_KNOWN_MODEL_KEYS = {
    "variant",
    "attention",
    "classes",
    "input_size",
    "preprocessing",
    "file",
    "sha256",
    "source",
    "accuracy",
}


def _read_classes(ref: str | list[str], weights_dir: Path, set_name: str) -> list[str]:
    if isinstance(ref, list):
        return [str(c) for c in ref]
    path = weights_dir / ref
    if not path.exists():
        raise AttnvizError(f"{path}: class list of model set {set_name!r} is missing; re-import the set")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Manifest:
    """``weights/manifest.json``: the installed model sets."""

    def __init__(self, weights_dir: Path | None = None) -> None:
        self.weights_dir = Path(weights_dir or default_weights_dir())
        self.path = self.weights_dir / MANIFEST_NAME
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise AttnvizError(
                    f"{self.path}: not valid JSON ({exc.msg} at line {exc.lineno}); restore it from git"
                ) from None
        else:
            self.data = {"format": 1, "default_set": BUILTIN_SET, "sets": {}}

    @property
    def default_set(self) -> str:
        return self.data.get("default_set", BUILTIN_SET)

    def set_names(self) -> list[str]:
        return list(self.data["sets"])

    def get(self, name: str | None = None) -> ModelSet:
        name = name or self.default_set
        raw = self.data["sets"].get(name)
        if raw is None and not self.path.exists():
            raise AttnvizError(
                f"no model sets: {self.path} does not exist; point attnviz at a weights folder with --weights-dir "
                f"DIR or ATTNVIZ_WEIGHTS=DIR (the repository's weights/ holds the built-in set), or import a set "
                f"into this one with python -m attnviz.weights import"
            )
        if raw is None:
            known = ", ".join(self.set_names()) or "none"
            raise AttnvizError(
                f"model set {name!r} is not in {self.path} (installed: {known}); import it first "
                f"with python -m attnviz.weights import"
            )
        models = {}
        for key, m in raw["models"].items():
            if m.get("variant") not in VARIANTS:
                raise AttnvizError(
                    f"{self.path}: model {key!r} of set {name!r} has unknown variant {m.get('variant')!r}"
                )
            models[key] = ModelEntry(
                variant=m["variant"],
                file=m["file"],
                sha256=m["sha256"],
                classes=_read_classes(m["classes"], self.weights_dir, name),
                preprocessing=Preprocessing.from_dict(m.get("preprocessing", {})),
                attention=dict(m.get("attention", {})),
                source=m.get("source", ""),
                accuracy=dict(m.get("accuracy", {})),
                extra={k: v for k, v in m.items() if k not in _KNOWN_MODEL_KEYS},
            )
        extra = {k: v for k, v in raw.items() if k not in ("models", "description")}
        return ModelSet(name=name, description=raw.get("description", ""), models=models, extra=extra)

    def put_model(
        self,
        set_name: str,
        entry: ModelEntry,
        description: str | None = None,
        classes_ref: str | None = None,
        set_extra: dict | None = None,
    ) -> None:
        """Add or replace one model of a set (keyed by its variant) and save the manifest."""
        raw = self.data["sets"].setdefault(set_name, {"description": description or "", "models": {}})
        if description:
            raw["description"] = description
        if set_extra:
            raw.update(set_extra)
        existing = [m for k, m in raw["models"].items() if k != entry.variant]
        if existing:
            other = _read_classes(existing[0]["classes"], self.weights_dir, set_name)
            if other != entry.classes:
                raise AttnvizError(
                    f"model set {set_name!r} already has {len(other)} classes that differ from this "
                    f"model's {len(entry.classes)}; use another --set name"
                )
        raw["models"][entry.variant] = entry.to_dict(classes_ref)
        self.save()

    def save(self) -> None:
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(self.path)


# --------------------------------------------------------------------------- checkpoint files


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safetensors_header(path: Path) -> dict:
    """A safetensors file's header (tensor name -> dtype, shape, offsets), read without its tensors; pickles and
    truncated or foreign files are refused in one line."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        brace = fh.read(1)
    # A safetensors header length can begin with a pickle's bytes (640 = b"\x80\x02..."): a file whose first
    # 8 bytes give a length that fits and whose header then opens with "{" is safetensors, not a pickle.
    fits = len(head) == 8 and struct.unpack("<Q", head)[0] <= size - 8 and brace == b"{"
    if not fits and any(head.startswith(magic) for magic in PICKLE_MAGIC):
        raise AttnvizError(
            f"{path}: is a pickle (.pth) file, which is never loaded here; convert it with "
            f"python -m attnviz.weights import or add"
        )
    if len(head) < 8:
        raise AttnvizError(f"{path}: is truncated ({size} bytes); download or copy it again")
    header_len = struct.unpack("<Q", head)[0]
    if header_len > size - 8 or header_len > 100_000_000:
        raise AttnvizError(
            f"{path}: is not a safetensors file or is truncated (header says {header_len} bytes, "
            f"file has {size}); download or copy it again"
        )
    with open(path, "rb") as fh:
        fh.seek(8)
        try:
            header = json.loads(fh.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AttnvizError(f"{path}: safetensors header is damaged; download or copy it again") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise AttnvizError(
            f"{path}: is truncated ({size} bytes, needs {8 + header_len + end}); download or copy it again"
        )
    return header


def check_state_dict(state: dict[str, torch.Tensor], model: nn.Module, origin: str) -> None:
    """Every tensor of the model filled, nothing left over, every shape equal; else one line naming the keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} with wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
        )
    if problems:
        raise AttnvizError(
            f"{origin}: tensors do not fit the architecture: {'; '.join(problems)}; "
            f"check the variant and class count it was registered with"
        )


def read_safetensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint after checking that it exists, is safetensors, whole, and has the expected hash."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise AttnvizError(f"{path}: weights file is missing; restore it (git lfs / git checkout) or re-import the set")
    safetensors_header(path)  # refuses pickles and truncated files before parsing them
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            raise AttnvizError(
                f"{path}: sha256 is {actual[:12]}..., the manifest expects {expected_sha256[:12]}...; "
                f"the file was changed or damaged, restore or re-import it"
            )
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise AttnvizError(f"{path}: cannot be read as safetensors ({exc}); download or copy it again") from None


def write_safetensors(
    state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None = None, metadata: dict | None = None
) -> str:
    """Write a state dict (floating tensors optionally cast) and return the file's sha256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return sha256_of(path)


def load_model(entry: ModelEntry, weights_dir: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Build the entry's architecture, load its verified weights in float32, eval mode."""
    path = weights_dir / entry.file
    state = read_safetensors(path, entry.sha256)
    # Built on the meta device: no random initialisation of weights the checkpoint replaces at once (about half
    # of a set's loading time); the checkpoint's tensors are then the model's own (assign).
    with torch.device("meta"):
        model = build_model(entry.spec)
    check_state_dict(state, model, str(path))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a tensor outside the state dict
        model = build_model(entry.spec)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device).eval()


@dataclass
class LoadedSet:
    """A model set ready for inference: models in eval mode, keyed by variant."""

    info: ModelSet
    models: dict[str, nn.Module]
    weights_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def gate_means_loader(self, variant: str):
        """A function that reads (once, sha256 checked) the stored mean output of each of the model's gates,
        ``"layer3.2:channel" -> tensor``; None when the manifest names no such file for the model."""
        ref = self.info.models[variant].extra.get("gate_means")
        if not ref or self.weights_dir is None:
            return None
        path, expected = self.weights_dir / ref["file"], ref["sha256"]
        cache: dict[str, dict[str, torch.Tensor]] = {}

        def load() -> dict[str, torch.Tensor]:
            if "means" not in cache:
                cache["means"] = {k: v.float() for k, v in read_safetensors(path, expected).items()}
            return cache["means"]

        return load

    def domain_model(self, variant: str):
        """The model's fitted out-of-domain scorer (``attnviz.domain.DomainModel``, sha256 checked), or None when
        the manifest names none (an imported set: its results say "not calibrated")."""
        return read_domain_model(self.info.models[variant].extra.get("domain"), self.weights_dir)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def preprocessing(self) -> Preprocessing:
        return self.info.preprocessing


def read_domain_model(ref: dict | None, weights_dir: Path | None):
    """A manifest entry's out-of-domain statistics, read and sha256 checked like a checkpoint; None without."""
    if not ref or weights_dir is None:
        return None
    from attnviz.domain import DomainModel

    path = Path(weights_dir) / ref["file"]
    try:
        return DomainModel.from_tensors(read_safetensors(path, ref["sha256"]), ref["scorer"])
    except (KeyError, ValueError) as exc:
        raise AttnvizError(f"{path}: not the out-of-domain statistics its manifest entry describes ({exc}); "
                           f"refit them with python -m attnviz.domain_fit fit") from exc


def load_model_set(
    name: str | None = None,
    weights_dir: Path | str | None = None,
    device: str | torch.device = "cpu",
    variants: list[str] | None = None,
) -> LoadedSet:
    """Load a model set by name (the manifest's default, the built-in set, when ``name`` is None)."""
    manifest = Manifest(Path(weights_dir) if weights_dir else None)
    info = manifest.get(name)
    wanted = [v for v in info.models if variants is None or v in variants]
    models = {v: load_model(info.models[v], manifest.weights_dir, device) for v in wanted}
    return LoadedSet(info=info, models=models, weights_dir=manifest.weights_dir)


def verify(manifest: Manifest, set_name: str | None = None) -> list[tuple[str, str, str]]:
    """Check every model file of one set or all sets: (set, variant, "ok" or the error line)."""
    results = []
    for name in [set_name] if set_name else manifest.set_names():
        info = manifest.get(name)
        for variant, entry in info.models.items():
            try:
                path = manifest.weights_dir / entry.file
                model = build_model(entry.spec)
                check_state_dict(read_safetensors(path, entry.sha256), model, str(path))
                read_domain_model(entry.extra.get("domain"), manifest.weights_dir)
                results.append((name, variant, "ok"))
            except AttnvizError as exc:
                results.append((name, variant, str(exc)))
    return results


if __name__ == "__main__":
    import sys

    from attnviz.weights_cli import main

    sys.exit(main())
