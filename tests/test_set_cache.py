"""Loaded model sets are kept least recently used first out, within a memory budget."""

from __future__ import annotations

import gc
import weakref

import pytest
from conftest import make_model_set

from attnviz import explainer as explainer_module
from attnviz.errors import AttnvizError
from attnviz.set_cache import BUDGET_ENV, SetCache, budget_bytes, model_bytes, set_bytes_on_load
from attnviz.settings import SET_CACHE_MB


class Loads:
    """A stand-in loader: records what it loaded; each thing weighs 100 bytes."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def __call__(self, key: str) -> dict:
        self.loaded.append(key)
        return {"name": key}


def test_the_least_recently_used_set_goes_first_when_the_budget_is_passed():
    loads = Loads()
    cache = SetCache(loads, lambda value: 100, budget=lambda: 250)
    a = cache.get("a")
    cache.get("b")
    assert cache.get("a") is a and loads.loaded == ["a", "b"]  # kept: loaded once
    cache.get("c")  # 300 > 250: b, used least recently, goes
    assert list(cache.kept()) == ["a", "c"] and cache.total() == 200
    cache.get("b")
    assert loads.loaded == ["a", "b", "c", "b"] and list(cache.kept()) == ["c", "b"]


def test_a_set_alone_over_the_budget_is_kept_and_puts_out_every_other():
    loads = Loads()
    cache = SetCache(loads, lambda value: 400 if value["name"] == "big" else 100, budget=lambda: 250)
    cache.get("a")
    big = cache.get("big")
    assert list(cache.kept()) == ["big"] and cache.get("big") is big


def test_with_the_size_known_beforehand_the_others_go_before_the_new_one_loads():
    """The process never holds more than the budget: what a load sees already kept is at most the budget less
    the incoming size."""
    held_during_loads = []
    cache: SetCache = SetCache(lambda key: held_during_loads.append(cache.total()) or key, lambda value: 100,
                               budget=lambda: 250, estimate=lambda key: 100)
    for key in ("a", "b", "c", "a"):
        cache.get(key)
    assert held_during_loads == [0, 100, 100, 100] and list(cache.kept()) == ["c", "a"]


def test_the_budget_comes_from_the_environment_or_the_settings(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert budget_bytes() == SET_CACHE_MB * 2**20
    monkeypatch.setenv(BUDGET_ENV, "300")
    assert budget_bytes() == 300 * 2**20
    for wrong in ("0", "-5", "1.5", "lots"):
        monkeypatch.setenv(BUDGET_ENV, wrong)
        with pytest.raises(AttnvizError, match=f"{BUDGET_ENV} must be a whole number of megabytes"):
            budget_bytes()


def test_switching_sets_past_the_budget_frees_the_one_put_out(tmp_path, monkeypatch):
    """Two one-model sets (a ResNet50 with 4 classes is about 90 MiB) under a 150 MB budget: loading the second
    puts the first out, and nothing keeps it alive; asking for the first again loads it afresh."""
    first = make_model_set(tmp_path / "first", "first", variants=("resnet50",))
    second = make_model_set(tmp_path / "second", "second", variants=("resnet50",))
    monkeypatch.setenv(BUDGET_ENV, "150")
    cache = SetCache(explainer_module.EXPLAINERS._load, explainer_module.EXPLAINERS._size,
                     estimate=explainer_module.EXPLAINERS._estimate)
    monkeypatch.setattr(explainer_module, "EXPLAINERS", cache)
    one = explainer_module.get_explainer("first", str(first))
    assert 80 * 2**20 < model_bytes(one.model_set.models) < 100 * 2**20  # two do not fit in 150 MB
    assert set_bytes_on_load("first", str(first)) == model_bytes(one.model_set.models)  # known before loading
    assert set_bytes_on_load("nowhere", str(first)) == 0
    gone = weakref.ref(one)
    assert explainer_module.get_explainer("first", str(first)) is one
    del one
    explainer_module.get_explainer("second", str(second))
    gc.collect()
    assert gone() is None
    assert [key[0] for key in cache.kept()] == ["second"]
    again = explainer_module.get_explainer("first", str(first))
    assert [key[0] for key in cache.kept()] == ["first"] and again.model_set.name == "first"
