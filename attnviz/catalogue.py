"""The model sets the app offers: the shipped weights folder's and those of a writable folder beside it.

The shipped folder may be read-only (the Docker image's); sets the app downloads (``attnviz.get_imagenet``) go to
the writable folder, ``user_weights_dir()``, and a ``Catalogue`` reads both manifests as one list.

    sets = catalogue()            # weights/ (or $ATTNVIZ_WEIGHTS) and the writable folder
    sets.set_names(); sets.get("imagenet"); sets.folder("imagenet")
"""

from __future__ import annotations

import os
from pathlib import Path

from attnviz.errors import AttnvizError
from attnviz.weights import Manifest, ModelSet, default_weights_dir


def user_weights_dir() -> Path:
    """The writable folder the app downloads model sets into, read beside the shipped one (which may be
    read-only, as in the Docker image): $ATTNVIZ_USER_WEIGHTS, else $XDG_DATA_HOME/attnviz/weights, else
    ~/.local/share/attnviz/weights."""
    env = os.environ.get("ATTNVIZ_USER_WEIGHTS")
    if env:
        return Path(env)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "attnviz" / "weights"


class Catalogue:
    """The model sets of several weights folders as one list: the shipped folder first, then the writable one
    the app downloads into (``user_weights_dir``). A set name in two folders is the first folder's. Reads the
    manifests again on ``reload`` (after a download, or another process's)."""

    def __init__(self, folders: list[Path | str]) -> None:
        unique: dict[Path, Path] = {}
        for folder in folders:
            unique.setdefault(Path(folder).resolve(), Path(folder))
        self.folders = list(unique.values())
        self.reload()

    def reload(self) -> None:
        manifests = [Manifest(folder) for folder in self.folders]
        holder: dict[str, Manifest] = {}
        for manifest in manifests:
            for name in manifest.set_names():
                holder.setdefault(name, manifest)
        self.manifests, self._holder = manifests, holder  # whole: requests read them while a download reloads

    @property
    def weights_dir(self) -> Path:
        """The shipped folder (the first)."""
        return self.folders[0]

    @property
    def writable_dir(self) -> Path:
        """The folder downloads go to (the last)."""
        return self.folders[-1]

    @property
    def default_set(self) -> str:
        return self.manifests[0].default_set

    def set_names(self) -> list[str]:
        return list(self._holder)

    def manifest_of(self, name: str | None = None) -> Manifest:
        """The manifest holding set ``name``; the first (which then says the set is missing) when none does."""
        return self._holder.get(name or self.default_set, self.manifests[0])

    def folder(self, name: str | None = None) -> Path:
        """The weights folder holding set ``name``."""
        return self.manifest_of(name).weights_dir

    def get(self, name: str | None = None) -> ModelSet:
        name = name or self.default_set
        if name not in self._holder and self.set_names():
            raise AttnvizError(f"model set {name!r} is not installed (installed: {', '.join(self.set_names())}); "
                               f"import it first with python -m attnviz.weights import")
        return self.manifest_of(name).get(name)


def catalogue(weights_dir: Path | str | None = None) -> Catalogue:
    """The shipped weights folder (``weights_dir``, else the default) and the writable one, as one catalogue."""
    return Catalogue([Path(weights_dir) if weights_dir else default_weights_dir(), user_weights_dir()])
