"""Converting published ImageNet weights, and a user's own checkpoints, into attnviz model sets.

Four published sources are known (``SOURCES``): torchvision's ResNet50, timm's
SE-ResNet50, pytorchcv's CBAM-ResNet50 and the CBAM authors' own file. Each one
is read without unpickling code (``torch.load(..., weights_only=True)`` or
safetensors), renamed to attnviz's module names, checked so that every source
tensor is used and every attnviz tensor is filled, and written as float32
safetensors with its preprocessing and the accuracy its publisher reports.

    import_weights("timm-seresnet50", "imagenet", file="seresnet50_ra_224-8efdb4bb.pth")
    add_checkpoint("my_se.safetensors", "se", "classes.txt", "mine")
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib
import importlib.util
import io
import logging
import math
import re
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from attnviz.checkpoints import (
    convert_state_dict,
    fill_step_counters,
    first_line,
    read_checkpoint,
    refuse_legacy_seresnet,
    rename_official_cbam,
    rename_pytorchcv,
    rename_timm,
    rename_torchvision,
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
OFFICIAL_CBAM_FILE = "RESNET50_CBAM_new_name_wrap.pth"
OFFICIAL_CBAM_REPO = "https://github.com/Jongchan/attention-module"
TORCHVISION_WEIGHTS = ("V1", "V2")
# torchvision's release files are named after the first 8 hex digits of their sha256.
TORCHVISION_RELEASES = {"0676ba61": "V1", "11ad3fa6": "V2"}
TORCHVISION_URL = "https://download.pytorch.org/models/resnet50-{}.pth"  # ResNet50_Weights.IMAGENET1K_V*.url
TIMM_SE_TAG = "seresnet50.ra2_in1k"
TIMM_SE_TOP1 = 80.26  # timm's results table for seresnet50.ra2_in1k at 224 px
TIMM_SE_REPO = f"timm/{TIMM_SE_TAG}"  # its pretrained config's hf_hub_id
TIMM_SE_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in that repository, in this order
PYTORCHCV_MODEL = "cbam_resnet50"
# How long a source's host may take to answer before a download is called off as offline: the answer without
# internet then comes within seconds, instead of after the libraries' retries.
PROBE_TIMEOUT_S = 2.0
OFFICIAL_CBAM_TOP1, OFFICIAL_CBAM_TOP5 = 77.62, 93.95  # the official repository's README
# pytorchcv's file names carry the first 8 hex digits of their sha1: file, what it is, top-1, top-5 it reports.
PYTORCHCV_RELEASES = {
    "d8cf8488": ("cbam_resnet50-0505-d8cf8488.pth", "imgclsmob's own training, converted from Gluon", 79.83, 94.95),
    "a1172fe6": ("cbam_resnet50-0605-a1172fe6.pth", "the official CBAM weights, converted", OFFICIAL_CBAM_TOP1,
                 OFFICIAL_CBAM_TOP5),
}
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


def _network_errors() -> tuple[type[BaseException], ...]:
    # URLError, requests' and huggingface_hub's errors are OSErrors; torch.hub and pytorchcv raise
    # RuntimeError / ValueError for a bad status or hash; httpx's (and huggingface_hub's httpx2) are plain Exceptions.
    errors: list[type[BaseException]] = [OSError, RuntimeError, ValueError]
    for module in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the host of ``url`` gives no answer within ``timeout`` s, or None when it answers.

    One HEAD request to the host's root through the proxies the environment names, as the download libraries use.
    Any HTTP answer, even an error status or a certificate this Python refuses, counts as an answer: the library
    then says what is wrong. The request runs in a thread so that a name lookup that hangs is bounded too.
    """
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(f"{parts.scheme}://{parts.netloc}/", method="HEAD")
    outcome: list[str | None] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except urllib.error.URLError as exc:
            outcome.append(None if isinstance(exc.reason, ssl.SSLError) else first_line(exc.reason, 80))
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(first_line(exc, 80))

    thread = threading.Thread(target=ask, name="attnviz-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _require_reachable(source: str, url: str, manual: str) -> None:
    """Stop in one line, before the library starts its retries, when ``url``'s host cannot be reached."""
    reason = _unreachable(url)
    if reason is not None:
        raise AttnvizError(f"{source} needs internet to download its weights, and {urllib.parse.urlsplit(url).netloc} "
                           f"cannot be reached ({reason}); on a machine with internet download {manual}, "
                           f"then pass the file with --file PATH")


def _download_failed(source: str, exc: BaseException, manual: str) -> AttnvizError:
    # The innermost cause says what happened (a 404, a refused connection); wrappers such as the hub's
    # "cannot find the requested files in the local cache" only say that something did.
    for _ in range(8):
        if exc.__cause__ is None and exc.__context__ is None:
            break
        exc = exc.__cause__ or exc.__context__
    return AttnvizError(f"cannot download {source} weights ({first_line(exc, 80)}); on a machine with internet "
                        f"download {manual}, then pass the file with --file PATH")


@contextlib.contextmanager
def _library_notices_hidden() -> Iterator[None]:
    """Hide the download libraries' retry notices and warnings: attnviz reports a failure once, in one line.

    Progress bars (tqdm, on stderr) stay; pytorchcv's 'Downloading ... retrying' lines are prints, hence stdout.
    """
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hub_logger.setLevel(level)


def torchvision_url(version: str) -> str:
    """The URL of torchvision's ResNet50 release file ('V1' or 'V2'), without importing torchvision."""
    prefix = {v: k for k, v in TORCHVISION_RELEASES.items()}[version]
    return TORCHVISION_URL.format(prefix)


def _download_torchvision(version: str | None) -> Path:
    """The release file in torch.hub's cache (where torchvision keeps it), downloaded and hash-checked if absent."""
    url = torchvision_url(version or "V1")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.is_file():
        return cached
    _require_reachable("torchvision-resnet50", url, url)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _library_notices_hidden():
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=Path(url).stem.rsplit("-", 1)[1])
    except _network_errors() as exc:
        raise _download_failed("torchvision-resnet50", exc, url) from None
    return cached


def _download_timm(_: str | None) -> Path:
    """timm's own file from the Hugging Face hub (safetensors first, as timm looks), or its cached copy."""
    _require("timm", "timm-seresnet50")  # its pretrained config gives the preprocessing
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    for name in TIMM_SE_FILES:
        cached = try_to_load_from_cache(TIMM_SE_REPO, name)
        if isinstance(cached, str):
            return Path(cached)
    url = f"{constants.ENDPOINT}/{TIMM_SE_REPO}/resolve/main/{TIMM_SE_FILES[0]}"
    if constants.HF_HUB_OFFLINE:
        raise AttnvizError(f"timm-seresnet50 needs to download its weights but HF_HUB_OFFLINE is set; unset it, or "
                           f"on a machine with internet download {url}, then pass the file with --file PATH")
    _require_reachable("timm-seresnet50", url, url)
    try:
        with _library_notices_hidden():
            for name in TIMM_SE_FILES:
                try:
                    return Path(hf_hub_download(TIMM_SE_REPO, name, library_name="timm"))
                except EntryNotFoundError:
                    if name == TIMM_SE_FILES[-1]:
                        raise
    except (EntryNotFoundError, *_network_errors()) as exc:
        raise _download_failed("timm-seresnet50", exc, url) from None
    raise AssertionError("unreachable")  # the loop returns or raises


def pytorchcv_url() -> tuple[str, str]:
    """pytorchcv's cbam_resnet50 release: (the file name it caches, the URL of the zip it downloads it in)."""
    from pytorchcv.models.common import model_store

    error, sha1, tag = model_store.get_model_name_suffix_data(PYTORCHCV_MODEL)
    name = f"{PYTORCHCV_MODEL}-{error}-{sha1[:8]}.pth"
    return name, f"{model_store.imgclsmob_repo_url}/releases/download/{tag}/{name}.zip"


def _download_pytorchcv(_: str | None) -> Path:
    _require("pytorchcv", "pytorchcv-cbam-resnet50")
    from pytorchcv.models.common.model_store import get_model_file

    # Only the file: pytorchcv's own loader unpickles it in full, this module reads it weights-only.
    store = Path(torch.hub.get_dir()) / "pytorchcv"
    name, url = pytorchcv_url()
    if not (store / name).is_file():  # a cached file is hash-checked by get_model_file
        _require_reachable("pytorchcv-cbam-resnet50", url, f"{url}, unzip it")
    try:
        with _library_notices_hidden():
            path = get_model_file(PYTORCHCV_MODEL, local_model_store_dir_path=str(store))
    except _network_errors() as exc:
        raise _download_failed("pytorchcv-cbam-resnet50", exc, f"{url}, unzip it") from None
    return Path(path)


def _no_download_official(_: str | None) -> dict[str, torch.Tensor]:
    raise AttnvizError(f"cbam-official has no download library: download {OFFICIAL_CBAM_FILE} from "
                       f"{OFFICIAL_CBAM_REPO} (linked in its README) and pass --file PATH")


def _require(module: str, source: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise AttnvizError(f"{source} needs the {module} package to download: pip install {module}, "
                           f"or pass --file PATH")


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source("torchvision-resnet50", "resnet50", "torchvision resnet50", rename_torchvision,
               _torchvision_release, _download_torchvision),
        Source("timm-seresnet50", "se", "timm seresnet50", rename_timm, _timm_release, _download_timm),
        Source("pytorchcv-cbam-resnet50", "cbam", "pytorchcv cbam_resnet50", rename_pytorchcv,
               pytorchcv_release, _download_pytorchcv),
        Source("cbam-official", "cbam", f"official CBAM ResNet50 ({OFFICIAL_CBAM_FILE})", rename_official_cbam,
               _official_cbam_release, _no_download_official),
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
    fetched: Path | dict[str, torch.Tensor] | None = None
    if file is None:
        # Without a file, torchvision's V1 weights: the classic recipe the SE and CBAM papers compare against.
        fetched = spec.download((torchvision_weights or "V1").upper())
        file = fetched if isinstance(fetched, Path) else None
    version, extra = None, {}
    if file is not None:
        path = Path(file)
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
