"""Downloading published ImageNet weights through each publisher's own library, or saying in one line why not.

Before a download, the host is asked with a short timeout (``PROBE_TIMEOUT_S``): without internet the answer comes
within seconds, instead of after the libraries' retries. Each ``download_*`` returns the library's cached file
(``attnviz.importers`` converts it); a failure is one ``AttnvizError`` line naming the file to fetch by hand.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import importlib.util
import logging
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from attnviz.checkpoints import first_line
from attnviz.errors import AttnvizError

OFFICIAL_CBAM_FILE = "RESNET50_CBAM_new_name_wrap.pth"
OFFICIAL_CBAM_REPO = "https://github.com/Jongchan/attention-module"
# torchvision's release files are named after the first 8 hex digits of their sha256.
TORCHVISION_RELEASES = {"0676ba61": "V1", "11ad3fa6": "V2"}
TORCHVISION_URL = "https://download.pytorch.org/models/resnet50-{}.pth"  # ResNet50_Weights.IMAGENET1K_V*.url
TIMM_SE_TAG = "seresnet50.ra2_in1k"
TIMM_SE_REPO = f"timm/{TIMM_SE_TAG}"  # its pretrained config's hf_hub_id
TIMM_SE_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in that repository, in this order
PYTORCHCV_MODEL = "cbam_resnet50"
# How long a source's host may take to answer before a download is called off as offline: the answer without
# internet then comes within seconds, instead of after the libraries' retries.
PROBE_TIMEOUT_S = 2.0


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


class _QuietStdout:
    """``sys.stdout`` while a download runs: what a downloading thread prints is dropped, every other thread's
    output (the app's other requests) goes to the stream that was there."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if getattr(_QUIET, "on", False):
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)  # flush, encoding, isatty, fileno, ...


_QUIET = threading.local()  # .on: this thread is downloading
_QUIET_LOCK = threading.Lock()
_QUIET_STATE: dict = {"count": 0, "saved": None}  # downloads running; what the first one replaced


@contextlib.contextmanager
def _library_notices_hidden() -> Iterator[None]:
    """Hide the download libraries' retry notices and warnings: attnviz reports a failure once, in one line.

    Progress bars (tqdm, on stderr) stay; pytorchcv's 'Downloading ... retrying' lines are prints, hence stdout:
    only the downloading thread's prints are dropped (the app downloads in a request's thread while others are
    served). The first download in puts the quiet stdout, the hub's log level and the warnings filter in place,
    the last one out puts back what was there, so that downloads in several threads never leave them changed.
    """
    hub_logger = logging.getLogger("huggingface_hub")
    with _QUIET_LOCK:
        if _QUIET_STATE["count"] == 0:
            _QUIET_STATE["saved"] = (sys.stdout, hub_logger.level, list(warnings.filters))
            sys.stdout = _QuietStdout(sys.stdout)
            hub_logger.setLevel(logging.ERROR)
            warnings.simplefilter("ignore")
        _QUIET_STATE["count"] += 1
    _QUIET.on = True
    try:
        yield
    finally:
        _QUIET.on = False
        with _QUIET_LOCK:
            _QUIET_STATE["count"] -= 1
            if _QUIET_STATE["count"] == 0:
                stdout, level, filters = _QUIET_STATE["saved"]
                if isinstance(sys.stdout, _QuietStdout):  # else replaced since by someone else: theirs now
                    sys.stdout = stdout
                hub_logger.setLevel(level)
                warnings.filters[:] = filters
                getattr(warnings, "_filters_mutated", lambda: None)()  # forget what the changed filters decided


def torchvision_url(version: str) -> str:
    """The URL of torchvision's ResNet50 release file ('V1' or 'V2'), without importing torchvision."""
    prefix = {v: k for k, v in TORCHVISION_RELEASES.items()}[version]
    return TORCHVISION_URL.format(prefix)


def download_torchvision(version: str | None) -> Path:
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


def download_timm(_: str | None) -> Path:
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


def download_pytorchcv(_: str | None) -> Path:
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


def no_download_official(_: str | None) -> dict[str, torch.Tensor]:
    raise AttnvizError(f"cbam-official has no download library: download {OFFICIAL_CBAM_FILE} from "
                       f"{OFFICIAL_CBAM_REPO} (linked in its README) and pass --file PATH")


def _require(module: str, source: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise AttnvizError(f"{source} needs the {module} package to download: pip install {module}, "
                           f"or pass --file PATH")
