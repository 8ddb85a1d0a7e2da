"""The model sets a process keeps loaded: least recently used out first, within a memory budget.

A server that switches between the built-in set and an imported ImageNet set would otherwise keep every set it
ever loaded. The budget counts the bytes of the models' parameters and buffers (what a set holds; a ResNet50
in float32 is about 90-107 MiB) and is ``attnviz.settings.SET_CACHE_MB`` (768 MiB: the built-in four-model set
and the three ImageNet models together hold 692 MiB; a third set puts the least recently used out) unless
``ATTNVIZ_SET_CACHE_MB`` says otherwise. A set's size is known before it loads, from its checkpoints'
headers, so the sets it will not fit beside are put out first and the process never holds them all at once.
The set just asked for is never put out, even alone over the budget; a request still running on a set that
was put out finishes with it, and its memory goes back when that request ends (``bench/bench_sets.py``
measures RSS).
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from torch import nn

from attnviz.errors import AttnvizError
from attnviz.settings import SET_CACHE_MB
from attnviz.weights import Manifest, safetensors_header

Loaded = TypeVar("Loaded")
BUDGET_ENV = "ATTNVIZ_SET_CACHE_MB"


def model_bytes(models: dict[str, nn.Module]) -> int:
    """The bytes of the models' parameters and buffers."""
    return sum(t.numel() * t.element_size() for m in models.values() for t in (*m.parameters(), *m.buffers()))


_INTEGER_BYTES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def set_bytes_on_load(set_name: str | None, weights_dir: str | None) -> int:
    """What a set will hold once loaded (its models in float32), read from its checkpoints' headers without
    loading them; 0 when a file cannot be read (loading it then says what is wrong)."""
    total = 0
    try:
        manifest = Manifest(weights_dir)
        for entry in manifest.get(set_name).models.values():
            header = safetensors_header(manifest.weights_dir / entry.file)
            total += sum(math.prod(tensor["shape"]) * _INTEGER_BYTES.get(tensor["dtype"], 4)  # floats: float32
                         for name, tensor in header.items() if name != "__metadata__")
    except (AttnvizError, OSError, KeyError):
        return 0
    return total


def budget_bytes() -> int:
    """The budget: ``ATTNVIZ_SET_CACHE_MB`` when set (a whole number of MB, at least 1), else SET_CACHE_MB."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return SET_CACHE_MB * 2**20
    if not raw.isdigit() or int(raw) < 1:
        raise AttnvizError(f"{BUDGET_ENV} must be a whole number of megabytes, at least 1, not {raw!r}",
                           code="choice")
    return int(raw) * 2**20


class SetCache(Generic[Loaded]):
    """Loaded things by key, each with its size; loading one that takes the total over the budget puts out the
    least recently used others until it fits (or only it is left): before loading it when ``estimate`` tells
    its size beforehand, else after."""

    def __init__(self, load: Callable[[Hashable], Loaded], size: Callable[[Loaded], int],
                 budget: Callable[[], int] = budget_bytes, estimate: Callable[[Hashable], int] | None = None
                 ) -> None:
        self._load, self._size, self._budget, self._estimate = load, size, budget, estimate
        self._items: OrderedDict[Hashable, tuple[Loaded, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Loaded:
        with self._lock:  # one load at a time: two requests for a new set load it once
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            budget = self._budget()
            incoming = self._estimate(key) if self._estimate is not None else 0
            while self._items and self.total() + incoming > budget:  # room first, when the size is known
                self._items.popitem(last=False)
            value = self._load(key)
            self._items[key] = (value, self._size(value))
            while len(self._items) > 1 and self.total() > budget:
                self._items.popitem(last=False)
            return value

    def total(self) -> int:
        return sum(size for _, size in self._items.values())

    def kept(self) -> dict[Hashable, int]:
        """What is loaded now, least recently used first, with its size in bytes."""
        with self._lock:
            return {key: size for key, (_, size) in self._items.items()}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
