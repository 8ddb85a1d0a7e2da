"""Converting published ImageNet weights, and a user's own checkpoints, into attnviz model sets.

Four published sources are known (``SOURCES``): torchvision's ResNet50, timm's
SE-ResNet50, pytorchcv's CBAM-ResNet50 and the CBAM authors' own file. Each one
is read without unpickling code (``torch.load(..., weights_only=True)`` or
safetensors), renamed to attnviz's module names, checked so that every source
tensor is used and every attnviz tensor is filled, and written as float32
safetensors with its preprocessing and the accuracy its publisher reports.

    import_imagenet("imagenet")  # the three published models (ResNet50, +SE, +CBAM) in one set
    import_weights("timm-seresnet50", "imagenet", file="seresnet50_ra_224-8efdb4bb.pth")
    add_checkpoint("my_se.safetensors", "se", "classes.txt", "mine")
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from attnviz.checkpoints import (
    convert_state_dict,
    fill_step_counters,
    read_checkpoint,
    refuse_legacy_seresnet,
    rename_official_cbam,
    rename_pytorchcv,
    rename_timm,
    rename_torchvision,
)
from attnviz.downloads import (  # noqa: F401 - the constants are also this module's public names
    OFFICIAL_CBAM_FILE,
    OFFICIAL_CBAM_REPO,
    PROBE_TIMEOUT_S,
    PYTORCHCV_MODEL,
    TIMM_SE_FILES,
    TIMM_SE_REPO,
    TIMM_SE_TAG,
    TORCHVISION_RELEASES,
    TORCHVISION_URL,
    download_pytorchcv,
    download_timm,
    download_torchvision,
    no_download_official,
    pytorchcv_url,
    torchvision_url,
)
from attnviz.errors import AttnvizError
from attnviz.models import VARIANTS, ModelSpec, build_model
from attnviz.weights import (
    Manifest,
    ModelEntry,
    Preprocessing,
    check_state_dict,
    sha256_of,
    write_safetensors,
)

IMAGENET_CLASSES_FILE = "imagenet1k_classes.txt"
IMAGENET_SET_DESCRIPTION = "ImageNet-1k (1000 classes): published weights, converted by attnviz.weights import"
TORCHVISION_WEIGHTS = ("V1", "V2")
TIMM_SE_TOP1 = 80.26  # timm's results table for seresnet50.ra2_in1k at 224 px
OFFICIAL_CBAM_TOP1, OFFICIAL_CBAM_TOP5 = 77.62, 93.95  # the official repository's README
# pytorchcv's file names carry the first 8 hex digits of their sha1: file, what it is, top-1, top-5 it reports.
PYTORCHCV_RELEASES = {
    "d8cf8488": ("cbam_resnet50-0505-d8cf8488.pth", "imgclsmob's own training, converted from Gluon", 79.83, 94.95),
    "a1172fe6": ("cbam_resnet50-0605-a1172fe6.pth", "the official CBAM weights, converted", OFFICIAL_CBAM_TOP1,
                 OFFICIAL_CBAM_TOP5),
}
IMAGENET_SOURCES = ("torchvision-resnet50", "timm-seresnet50", "pytorchcv-cbam-resnet50")  # `import imagenet`
SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Release:
    """What a set of published weights comes with: its description, preprocessing and reported accuracy."""

    description: str
    preprocessing: Preprocessing
    accuracy: dict


@dataclass(frozen=True)
class Source:
    """A publisher of ImageNet weights for one variant: how to rename its keys and where its files come from."""

    name: str
    variant: str
    summary: str
    rename: Callable[[str], str | None]
    release: Callable[[Path | None, str | None], Release]  # (file, torchvision version)
    download: Callable[[str | None], Path | dict[str, torch.Tensor]]  # a cached file, or the state dict itself


# --------------------------------------------------------------------------- releases and downloads


def _torchvision_weights_enum(version: str):
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights[f"IMAGENET1K_{version}"]


def _torchvision_release(_: Path | None, version: str | None) -> Release:
    version = version or "V1"
    weights = _torchvision_weights_enum(version)
    transform = weights.transforms()
    metrics = weights.meta["_metrics"]["ImageNet-1K"]
    return Release(
        description=f"torchvision ResNet50_Weights.IMAGENET1K_{version} ({Path(weights.url).name})",
        preprocessing=Preprocessing(resize=int(transform.resize_size[0]), crop=int(transform.crop_size[0]),
                                    mean=tuple(transform.mean), std=tuple(transform.std),
                                    interpolation=transform.interpolation.value),
        accuracy=_accuracy(metrics["acc@1"], metrics["acc@5"]),
    )


def _timm_release(_: Path | None, __: str | None) -> Release:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(TIMM_SE_TAG)
    crop = int(cfg.input_size[-1])
    return Release(
        description=f"timm {TIMM_SE_TAG} (SE-ResNet50, timm's RandAugment 'ra2' recipe)",
        preprocessing=Preprocessing(resize=math.floor(crop / cfg.crop_pct), crop=crop, mean=tuple(cfg.mean),
                                    std=tuple(cfg.std), interpolation=cfg.interpolation),
        accuracy={"imagenet_val_top1_reported_by_source": TIMM_SE_TOP1},
    )


def _accuracy(top1: float, top5: float) -> dict:
    return {"imagenet_val_top1_reported_by_source": top1, "imagenet_val_top5_reported_by_source": top5}


def _official_cbam_release(_: Path | None, __: str | None) -> Release:
    return Release(f"official CBAM ResNet50, Jongchan/attention-module ({OFFICIAL_CBAM_FILE})",
                   Preprocessing(resize=256, crop=224, interpolation="bilinear"),
                   _accuracy(OFFICIAL_CBAM_TOP1, OFFICIAL_CBAM_TOP5))


def pytorchcv_release(path: Path | None, _: str | None = None) -> Release:
    """Which pytorchcv cbam_resnet50 release a file is, by its sha1; an unknown file claims no accuracy."""
    preprocessing = Preprocessing(resize=256, crop=224, interpolation="bilinear")  # 224 px, crop ratio 0.875
    if path is not None:
        with open(path, "rb") as fh:
            known = PYTORCHCV_RELEASES.get(hashlib.file_digest(fh, "sha1").hexdigest()[:8])
        if known:
            name, what, top1, top5 = known
            return Release(f"pytorchcv cbam_resnet50 ({name}: {what})", preprocessing, _accuracy(top1, top5))
    name = path.name if path is not None else "state dict"
    return Release(f"pytorchcv cbam_resnet50 layout ({name}: not a known pytorchcv release, accuracy unknown)",
                   preprocessing, {})


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source("torchvision-resnet50", "resnet50", "torchvision resnet50", rename_torchvision,
               _torchvision_release, download_torchvision),
        Source("timm-seresnet50", "se", "timm seresnet50", rename_timm, _timm_release, download_timm),
        Source("pytorchcv-cbam-resnet50", "cbam", "pytorchcv cbam_resnet50", rename_pytorchcv,
               pytorchcv_release, download_pytorchcv),
        Source("cbam-official", "cbam", f"official CBAM ResNet50 ({OFFICIAL_CBAM_FILE})", rename_official_cbam,
               _official_cbam_release, no_download_official),
    )
}


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise AttnvizError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


def detect_torchvision_weights(path: Path | str, requested: str | None = None) -> str:
    """'V1' or 'V2' for a torchvision resnet50 file: from its sha256 when it is a release file, else ``requested``."""
    path = Path(path)
    if requested is not None and requested.upper() not in TORCHVISION_WEIGHTS:
        raise AttnvizError(f"--torchvision-weights must be V1 or V2, not {requested!r}")
    requested = requested.upper() if requested else None
    if not path.is_file():
        raise AttnvizError(f"{path}: no such file; check the path")
    digest = sha256_of(path)[:8]
    known = TORCHVISION_RELEASES.get(digest)
    if known:
        if requested and requested != known:
            raise AttnvizError(f"{path}: is torchvision's {known} release file (sha256 {digest}...), "
                               f"not {requested}; drop --torchvision-weights or pass {known}")
        return known
    if requested:
        return requested
    claimed = re.search(r"-([0-9a-f]{8})\.", path.name)
    if claimed and claimed[1] in TORCHVISION_RELEASES:
        raise AttnvizError(f"{path}: is named like torchvision's {TORCHVISION_RELEASES[claimed[1]]} release but its "
                           f"sha256 starts with {digest}, so it is another or a damaged file; download it again, "
                           f"or pass --torchvision-weights V1|V2 if you know which it is")
    raise AttnvizError(f"{path}: cannot tell torchvision's V1 from V2 weights by this file's hash; "
                       f"pass --torchvision-weights V1 or V2")


# --------------------------------------------------------------------------- installing into a set


def _check_set_name(set_name: str) -> None:
    if not SET_NAME.fullmatch(set_name or ""):
        raise AttnvizError(f"set name {set_name!r} is not allowed; use letters, digits, '.', '_' and '-' "
                           f"(starting with a letter or digit)")


def _load_checked(state: dict[str, torch.Tensor], spec: ModelSpec, origin: str) -> None:
    """Prove the tensors load into the architecture: same names, same shapes, strict load."""
    model = build_model(spec)
    check_state_dict(state, model, origin)
    model.load_state_dict(state, strict=True)


def _install(manifest: Manifest, set_name: str, entry: ModelEntry, state: dict[str, torch.Tensor],
             classes_ref: str, description: str) -> ModelEntry:
    """Write the weights and the class list and record the entry; nothing changes if the set refuses it."""
    final = manifest.weights_dir / entry.file
    incoming = final.with_name(f"{final.stem}.incoming.safetensors")
    entry.sha256 = write_safetensors(state, incoming, dtype=torch.float32,
                                     metadata={"variant": entry.variant, "format": "attnviz"})
    is_new = set_name not in manifest.set_names()
    try:
        manifest.put_model(set_name, entry, description=description if is_new else None, classes_ref=classes_ref)
    except BaseException:
        incoming.unlink(missing_ok=True)
        raise
    incoming.replace(final)
    classes_path = manifest.weights_dir / classes_ref
    text = "\n".join(entry.classes) + "\n"
    if not classes_path.exists() or classes_path.read_text(encoding="utf-8") != text:
        classes_path.parent.mkdir(parents=True, exist_ok=True)
        classes_path.write_text(text, encoding="utf-8")
    return entry


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, as torchvision ships them (no download)."""
    from torchvision.models import ResNet50_Weights

    return [str(c).strip() for c in ResNet50_Weights.IMAGENET1K_V1.meta["categories"]]


def import_weights(source: str, set_name: str, file: Path | str | None = None, weights_dir: Path | str | None = None,
                   torchvision_weights: str | None = None) -> ModelEntry:
    """Convert a source's ImageNet weights (``file``, or downloaded through its library) into ``set_name``."""
    spec = _source(source)
    _check_set_name(set_name)
    if torchvision_weights is not None and source != "torchvision-resnet50":
        raise AttnvizError("--torchvision-weights only applies to torchvision-resnet50")
    manifest = Manifest(Path(weights_dir) if weights_dir else None)
    if torchvision_weights is not None and torchvision_weights.upper() not in TORCHVISION_WEIGHTS:
        raise AttnvizError(f"--torchvision-weights must be V1 or V2, not {torchvision_weights!r}")
    # Without a file, torchvision's V1 weights: the classic recipe the SE and CBAM papers compare against.
    fetched = Path(file) if file is not None else spec.download((torchvision_weights or "V1").upper())
    return install_fetched(source, set_name, fetched, manifest, torchvision_weights)


# How ``import imagenet --files DIR`` tells the three files apart: the names they are published under.
IMAGENET_FILE_PATTERNS = {
    "torchvision-resnet50": ("resnet50-*.pth",),
    "timm-seresnet50": (*TIMM_SE_FILES, "*seresnet50*.safetensors", "*seresnet50*.pth", "*seresnet50*.bin"),
    "pytorchcv-cbam-resnet50": ("cbam_resnet50-*.pth",),
}


def imagenet_files(folder: Path | str) -> dict[str, Path]:
    """The three published files in ``folder`` (downloaded by hand, e.g. for a machine or an image build without
    internet), by source; one line naming what is missing or ambiguous."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AttnvizError(f"{folder}: no such folder; give the folder holding the three downloaded files")
    found, problems = {}, []
    for source, patterns in IMAGENET_FILE_PATTERNS.items():
        matches = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
        if len(matches) == 1:
            found[source] = matches[0]
        else:
            seen = f" ({', '.join(p.name for p in matches)})" if matches else ""
            count = "several files" if matches else "no file"
            problems.append(f"{source}: {count} named {' or '.join(patterns)}{seen}")
    if problems:
        raise AttnvizError(f"{folder}: " + "; ".join(problems) + "; put exactly one file of each there (as "
                           "published: torchvision's resnet50-*.pth, timm's model.safetensors, pytorchcv's "
                           "cbam_resnet50-*.pth unzipped)")
    return found


def import_imagenet(set_name: str = "imagenet", weights_dir: Path | str | None = None,
                    torchvision_weights: str | None = None,
                    report: Callable[[str], None] | None = None,
                    installed: Callable[[ModelEntry], None] | None = None,
                    files: Path | str | None = None) -> list[ModelEntry]:
    """The three published models of ``IMAGENET_SOURCES`` (ResNet50, +SE, +CBAM) into one set, in one step.

    Every download comes first (each through its library, into its cache), then each model is converted and
    installed: a download that fails (offline: one line within a few seconds) adds nothing, and a second try
    finds the files already downloaded in the caches. ``report`` gets a line per download, ``installed`` each
    model's entry once it is installed. With ``files``, a folder holding the three files, nothing is downloaded
    (``imagenet_files``)."""
    _check_set_name(set_name)
    version = (torchvision_weights or "V1").upper()
    if version not in TORCHVISION_WEIGHTS:
        raise AttnvizError(f"--torchvision-weights must be V1 or V2, not {torchvision_weights!r}")
    manifest = Manifest(Path(weights_dir) if weights_dir else None)
    fetched: dict[str, Path | dict[str, torch.Tensor]] = {}
    if files is not None:
        fetched.update(imagenet_files(files))
    for source in IMAGENET_SOURCES:  # offline, the first one stops it: one line, nothing said before
        if source in fetched:
            continue
        fetched[source] = _source(source).download(version)
        if report is not None:
            report(f"{source}: downloaded (or found in its library's cache)")
    # A file torchvision's cache holds is the release asked for (torch.hub checked its hash when it came, and
    # torchvision uses it as it is); a file given with ``files`` is told by its hash, or the option.
    torchvision_release = torchvision_weights if files is not None else version
    entries = []
    for source in IMAGENET_SOURCES:
        release = torchvision_release if source == "torchvision-resnet50" else None
        entries.append(install_fetched(source, set_name, fetched[source], manifest, release))
        if installed is not None:
            installed(entries[-1])
    return entries


def install_fetched(source: str, set_name: str, fetched: Path | dict[str, torch.Tensor], manifest: Manifest,
                    torchvision_weights: str | None = None) -> ModelEntry:
    """Convert what a source gave (a file, or the state dict itself), check it and install it into the set."""
    spec = _source(source)
    version, extra = None, {}
    if isinstance(fetched, Path):
        path = fetched
        version = detect_torchvision_weights(path, torchvision_weights) if source == "torchvision-resnet50" else None
        state = read_checkpoint(path)
        origin = str(path)
        extra = {"source_file": path.name, "source_sha256": sha256_of(path)}
    else:
        path, state, origin = None, fetched, f"downloaded {source} weights"
    converted = convert_state_dict(state, source, spec.rename, spec.variant, spec.summary, origin)
    model_spec = ModelSpec(spec.variant, 1000)
    _load_checked(converted, model_spec, origin)
    release = spec.release(path, version)
    entry = ModelEntry(variant=spec.variant, file=f"{set_name}/{spec.variant}.safetensors", sha256="",
                       classes=imagenet_classes(), preprocessing=release.preprocessing,
                       attention=model_spec.attention_options(), source=release.description,
                       accuracy=dict(release.accuracy), extra=extra)
    return _install(manifest, set_name, entry, converted, IMAGENET_CLASSES_FILE, IMAGENET_SET_DESCRIPTION)


def read_classes_file(path: Path | str) -> list[str]:
    """Class names, one per line; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise AttnvizError(f"{path}: no such class list; give a text file with one class name per line")
    try:
        classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise AttnvizError(f"{path}: is not UTF-8 text; give a text file with one class name per line") from None
    if not classes:
        raise AttnvizError(f"{path}: lists no classes; give a text file with one class name per line")
    return classes


def add_checkpoint(file: Path | str, variant: str, classes_file: Path | str, set_name: str,
                   weights_dir: Path | str | None = None, resize: int = 224, crop: int = 224,
                   attention: dict | None = None, source: str = "") -> ModelEntry:
    """Add a user's checkpoint (attnviz key names, safetensors or a .pth state dict) of one variant to a set."""
    if variant not in VARIANTS:
        raise AttnvizError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    _check_set_name(set_name)
    if not 0 < crop <= resize:
        raise AttnvizError(f"--crop ({crop}) must be positive and at most --resize ({resize})")
    path = Path(file)
    classes = read_classes_file(classes_file)
    state = read_checkpoint(path)
    refuse_legacy_seresnet(state, str(path))
    try:
        spec = ModelSpec.from_options(variant, len(classes), attention)
    except (TypeError, ValueError) as exc:
        raise AttnvizError(f"attention options {attention!r} do not fit {variant}: {exc}") from None
    head = state.get("fc.weight")
    if head is not None and head.dim() == 2 and head.shape[0] != len(classes):
        raise AttnvizError(f"{path}: has {head.shape[0]} outputs but {classes_file} lists {len(classes)} classes; "
                           f"give the class list it was trained with")
    fill_step_counters(state, build_model(spec).state_dict())
    _load_checked(state, spec, str(path))
    manifest = Manifest(Path(weights_dir) if weights_dir else None)
    entry = ModelEntry(variant=variant, file=f"{set_name}/{variant}.safetensors", sha256="", classes=classes,
                       preprocessing=Preprocessing(resize=resize, crop=crop), attention=spec.attention_options(),
                       source=source or f"user checkpoint {path.name}",
                       extra={"source_file": path.name, "source_sha256": sha256_of(path)})
    return _install(manifest, set_name, entry, state, f"{set_name}/classes.txt",
                    f"{len(classes)} classes from {Path(classes_file).name}")
