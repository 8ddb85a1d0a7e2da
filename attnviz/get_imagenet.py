"""The app's "Get the ImageNet models" button: the three published models downloaded once, into the writable
weights folder, while the app keeps serving.

Each file is downloaded by its publisher's library into that library's cache (to a temporary file, hash-checked,
then renamed: ``attnviz.downloads``), converted, and written into ``Catalogue.writable_dir`` (the shipped weights
may be read-only, as in the Docker image), whose manifest the app reads beside the shipped one; the set then
appears in the selector without a restart. One download at a time, across threads and processes: a lock file in
that folder; whoever presses the button while a download runs waits for it and gets its set.

Who may press it: the button is offered when the app listens on loopback (a person's own machine), and on any
other address only when ``ATTNVIZ_DOWNLOADS=1``, so that visitors of a public deployment cannot make the server
download; ``ATTNVIZ_DOWNLOADS=0`` turns it off everywhere.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from attnviz.catalogue import Catalogue
from attnviz.errors import AttnvizError

DOWNLOADS_ENV = "ATTNVIZ_DOWNLOADS"
IMAGENET_SET = "imagenet"
IMAGENET_VARIANTS = ("resnet50", "se", "cbam")  # what ``import_imagenet`` installs
IMAGENET_CLASS_COUNT = 1000
LOCK_NAME = ".imagenet-download.lock"
# What the page says it costs: torchvision's ResNet50 (97.8 MB), timm's SE-ResNet50 (112.6 MB) and pytorchcv's
# CBAM-ResNet50 (102.2 MB as a zip) as published, about 300 MB together.
DOWNLOAD_MB = 300


def downloads_allowed(host: str | None, env: dict[str, str] | None = None) -> bool:
    """Whether the app offers the download button when listening on ``host``: ``ATTNVIZ_DOWNLOADS`` when set
    ("1"/"0", also true/false, yes/no, on/off), else only on a loopback address."""
    value = (os.environ if env is None else env).get(DOWNLOADS_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    if value:
        raise AttnvizError(f"{DOWNLOADS_ENV}={value!r}: use 1 to offer the ImageNet download button on any "
                           f"address, 0 to never offer it, or leave it unset (offered on loopback only)")
    return is_loopback_host(host or "")


def is_loopback_host(host: str) -> bool:
    """``host`` (a name or an address, IPv6 in brackets or not) is this machine's loopback."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def imagenet_set(sets: Catalogue) -> str | None:
    """The installed set holding the three ImageNet models (1000 classes), by name; None when there is none."""
    for name in sets.set_names():
        try:
            info = sets.get(name)
        except AttnvizError:
            continue
        if set(IMAGENET_VARIANTS) <= set(info.models) and len(info.classes) == IMAGENET_CLASS_COUNT:
            return name
    return None


@contextmanager
def _one_download(folder: Path, waiting: Callable[[], None]) -> Iterator[None]:
    """Hold the folder's download lock (an flock, so other processes count too); ``waiting`` is called once if
    another download holds it, before this one waits for it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_NAME, "a")  # noqa: SIM115 - closed below, after the lock is released
    except OSError as exc:
        raise AttnvizError(f"cannot write the ImageNet models to {folder} ({exc.strerror}); give the app a writable "
                           f"folder with ATTNVIZ_USER_WEIGHTS=DIR, or import them on the command line with python "
                           f"-m attnviz.weights import imagenet") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting()
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


def get_imagenet(sets: Catalogue, report: Callable[[float, str], None] | None = None) -> tuple[str, bool]:
    """Download and install the three ImageNet models into ``sets.writable_dir`` unless a set of them is installed;
    returns (the set's name, whether this call installed it) and leaves ``sets`` re-read. ``report`` gets
    (fraction done, what is happening). Offline: one AttnvizError line within a few seconds, nothing installed."""
    from attnviz.importers import IMAGENET_SOURCES, import_imagenet

    def say(fraction: float, message: str) -> None:
        if report is not None:
            report(fraction, message)

    sets.reload()
    found = imagenet_set(sets)
    if found is not None:
        return found, False
    folder = sets.writable_dir
    steps = 2 * len(IMAGENET_SOURCES)  # each source: downloaded, then installed
    done = []

    def step(line: str) -> None:
        done.append(line)
        say(len(done) / steps, line)

    with _one_download(folder, lambda: say(0.0, "another download of the ImageNet models is running: waiting "
                                                "for it")):
        sets.reload()  # it may have installed them meanwhile
        found = imagenet_set(sets)
        if found is not None:
            return found, False
        say(0.0, f"downloading the ImageNet models (about {DOWNLOAD_MB} MB) into {folder}")
        import_imagenet(IMAGENET_SET, weights_dir=folder, report=step,
                        installed=lambda entry: step(f"{entry.variant}: installed ({entry.source})"))
        sets.reload()
    name = imagenet_set(sets)
    if name is None:  # e.g. a shipped set of the same name, without all three models, hides the new one
        raise AttnvizError(f"the ImageNet models were installed in {folder}, but the set {IMAGENET_SET!r} of the "
                           f"weights folder {sets.weights_dir} hides them; rename or remove that one")
    return name, True


__all__ = ["DOWNLOADS_ENV", "DOWNLOAD_MB", "downloads_allowed", "get_imagenet", "imagenet_set"]
