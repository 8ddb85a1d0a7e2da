"""Accumulators of per-scene values, and the JSON-ready summary with paired bootstrap intervals."""

from __future__ import annotations

import contextlib
import os
import platform
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from attnviz.analysis.config import (
    FAITHFULNESS,
    FORMAT,
    LOCALISATION,
    PROFILE_CHANNELS,
    PROFILE_CLASSES,
    PROFILE_MAX_CLASSES,
    AnalysisConfig,
)
from attnviz.attention import family
from attnviz.metrics import paired_bootstrap

if TYPE_CHECKING:
    from attnviz.analysis.run import _Context


class Records:
    """Per-item values, appended batch by batch: (metric, variant, config) -> values in item order."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], list[float]] = defaultdict(list)

    def add(self, metric: str, variant: str, config: str, values) -> None:
        self.values[metric, variant, config].extend(np.asarray(values, np.float64).ravel().tolist())

    def get(self, metric: str, variant: str, config: str) -> np.ndarray:
        return np.asarray(self.values.get((metric, variant, config), []), np.float64)

    def configs(self, metric: str) -> list[str]:
        return list(dict.fromkeys(c for m, _, c in self.values if m == metric))


class ExcitationStats:
    """Per block: count, sum and sum of squares of the channel weights per class, for the SE paper's analysis.
    Only the classes that occur get a row, so a set of 1000 classes measured on a few hundred images stays small."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.rows: dict[int, int] = {}  # class index -> its row, in the order the classes first occur
        self.count = np.zeros(0)
        self.sums: dict[str, np.ndarray] = {}
        self.squares: dict[str, np.ndarray] = {}

    def _rows(self, targets: np.ndarray) -> np.ndarray:
        for target in np.asarray(targets).tolist():
            self.rows.setdefault(int(target), len(self.rows))
        grow = len(self.rows) - len(self.count)
        if grow:
            self.count = np.concatenate([self.count, np.zeros(grow)])
            for table in (self.sums, self.squares):
                for block, values in table.items():
                    table[block] = np.concatenate([values, np.zeros((grow, values.shape[1]))])
        return np.array([self.rows[int(t)] for t in np.asarray(targets).tolist()], np.int64)

    def add(self, channel: dict[str, np.ndarray], targets: np.ndarray) -> None:
        rows = self._rows(targets)
        np.add.at(self.count, rows, 1)
        for block, weights in channel.items():
            weights = weights.astype(np.float64)
            if block not in self.sums:
                self.sums[block] = np.zeros((len(self.rows), weights.shape[1]))
                self.squares[block] = np.zeros((len(self.rows), weights.shape[1]))
            np.add.at(self.sums[block], rows, weights)
            np.add.at(self.squares[block], rows, weights**2)

    def merge(self, other: ExcitationStats) -> None:
        """Add another part's statistics (rows matched by class; classes new here are added in its order)."""
        if not other.rows:
            return
        classes = np.array(sorted(other.rows, key=other.rows.get), np.int64)  # other's classes in its row order
        rows = self._rows(classes)
        self.count[rows] += other.count
        for block, values in other.sums.items():
            if block not in self.sums:
                self.sums[block] = np.zeros((len(self.rows), values.shape[1]))
                self.squares[block] = np.zeros((len(self.rows), values.shape[1]))
            self.sums[block][rows] += values
            self.squares[block][rows] += other.squares[block]

    def summary(self, class_names: list[str], profile_blocks: list[str]) -> dict:
        order = [self.rows[c] for c in sorted(self.rows)]  # the classes that occur, in the set's order
        count = self.count[order]
        total = count.sum()
        # eta squared of pure noise is about (classes - 1) / (images - 1): the floor a small sample cannot go below
        chance = (len(order) - 1) / (total - 1) if total > 1 else 1.0
        out: dict = {
            "blocks": list(self.sums),
            "channels": [],
            "class_specificity": [],
            "spread": [],
            "mean": [],
            "near_one": [],
            "chance_specificity": float(chance),
            "profiles": {},
        }
        names = [class_names[c] for c in sorted(self.rows)]
        shown = _profile_classes(names, count)
        for block, all_sums in self.sums.items():
            sums, squares = all_sums[order], self.squares[block][order]
            class_means = sums / count[:, None]
            overall = sums.sum(axis=0) / total
            between = (count[:, None] * (class_means - overall) ** 2).sum(axis=0)
            within = np.maximum(squares - count[:, None] * class_means**2, 0).sum(0)
            variance = between.sum() + within.sum()
            out["channels"].append(int(sums.shape[1]))
            # eta squared: the share of the excitation's variance across images that the class explains
            out["class_specificity"].append(float(between.sum() / variance) if variance > 0 else 0.0)
            out["spread"].append(float(class_means.std(axis=0).mean()))
            out["mean"].append(float(overall.mean()))
            out["near_one"].append(float((overall > 0.9).mean()))
            if block in profile_blocks:
                out["profiles"][block] = {
                    "classes": {names[i]: np.round(class_means[i, :PROFILE_CHANNELS], 4).tolist() for i in shown},
                    "all": np.round(overall[:PROFILE_CHANNELS], 4).tolist(),
                }
        return out


def _profile_classes(names: list[str], count: np.ndarray, most: int = PROFILE_MAX_CLASSES) -> list[int]:
    """Which classes' profiles the result keeps: every class that occurs when there are at most ``most`` (all of
    the scenes'); else the figure's classes that occur and the most frequent others, up to ``most``."""
    if len(names) <= most:
        return list(range(len(names)))
    chosen = [names.index(c) for c in PROFILE_CLASSES if c in names]
    for i in sorted(range(len(names)), key=lambda i: (-count[i], i)):
        if len(chosen) >= most:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


def profile_blocks(blocks: list[str]) -> list[str]:
    """The SE paper's blocks: the last of each early stage and every block of the last (SE_2_3 ... SE_5_3)."""
    stages: dict[str, list[str]] = defaultdict(list)
    for block in blocks:
        stages[block.split(".")[0]].append(block)
    names = list(stages)
    return [stages[s][-1] for s in names[:-1]] + (stages[names[-1]] if names else [])


def per_scene(values: np.ndarray) -> np.ndarray:
    """A two-object scene's two CAMs averaged: the bootstrap resamples scenes, not CAMs of one scene."""
    return np.asarray(values, np.float64).reshape(-1, 2).mean(axis=1)


def _compare(values: dict[str, np.ndarray], config: AnalysisConfig) -> dict:
    boot = paired_bootstrap(values, config.resamples, config.confidence, config.seed)
    return {
        "n": boot.n,
        "models": {k: iv.to_dict() for k, iv in boot.means.items()},
        "differences": {
            f"{b}-{a}": {**iv.to_dict(), "excludes_zero": iv.excludes_zero} for (a, b), iv in boot.differences.items()
        },
    }


def _group(records: Records, metric: str, variants: list[str], config: AnalysisConfig) -> dict:
    return {
        key: _compare({v: records.get(metric, v, key) for v in variants}, config)
        for key in records.configs(metric)
        if key
    }


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("grad-cam", "numpy", "scipy"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out


def _spatial_summary(blocks: dict[str, dict[str, list[float]]], config: AnalysisConfig) -> dict:
    """One model's spatial attention against the true masks, block by block, with paired intervals."""
    spatial: dict = {"blocks": list(blocks), "energy": [], "chance": [], "energy_minus_chance": [],
                     "inside_outside_ratio": []}
    for stats in blocks.values():
        boot = paired_bootstrap(
            {"chance": np.array(stats["chance"]), "energy": np.array(stats["energy"])},
            config.resamples,
            config.confidence,
            config.seed,
        )
        spatial["energy"].append(boot.means["energy"].to_dict())
        spatial["chance"].append(boot.means["chance"].to_dict())
        iv = boot.differences["chance", "energy"]
        spatial["energy_minus_chance"].append({**iv.to_dict(), "excludes_zero": iv.excludes_zero})
        ratio = np.mean(stats["inside"]) / max(np.mean(stats["outside"]), 1e-9)
        spatial["inside_outside_ratio"].append(round(float(ratio), 4))
    return spatial


def summarise(ctx: _Context, threshold: dict, command: str) -> dict:
    config = ctx.config
    variants = list(ctx.explainers)
    records = ctx.records
    result: dict = {
        "format": FORMAT,
        "set": ctx.model_set.name,
        "variants": variants,
        "titles": {v: family(v).title for v in variants},
        "classes": ctx.model_set.classes,
        "command": command,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "input_size": ctx.model_set.preprocessing.crop,
        "target": ctx.source.target,
        "samples": {
            "val": config.val if config.threshold is None else 0,
            "test": config.test,
            "unseen": config.unseen,
            "pairs": config.pairs,
            "faithfulness": len(ctx.faith_items),
            "scorecam": config.scorecam,
            **ctx.source.samples(),
        },
        "threshold": threshold,
        "area_share": {split: float(np.mean(values)) for split, values in ctx.area.items() if values},
        "accuracy": {},
        "localisation": {},
        "pairs": {},
        "scorecam": {},
        "faithfulness": {},
        "excitation": {},
        "spatial": {},
        "machine": _machine(),
        "versions": _versions(),
    }
    for split in ("test", "unseen"):
        if split in records:
            if records[split].configs("accuracy"):  # none when each model explains its own top-1
                result["accuracy"][split] = _compare({v: records[split].get("accuracy", v, "") for v in variants},
                                                     config)
            result["localisation"][split] = {m: _group(records[split], m, variants, config) for m in LOCALISATION}
    if "pairs" in records:
        result["accuracy"]["pairs_top2"] = _compare({v: records["pairs"].get("top2", v, "") for v in variants}, config)
        result["pairs"] = _pairs_summary(records["pairs"], variants, config)
    if "scorecam" in records:
        result["scorecam"] = {m: _group(records["scorecam"], m, variants, config) for m in LOCALISATION}
    if "faithfulness" in records:
        result["faithfulness"] = {m: _group(records["faithfulness"], m, variants, config) for m in FAITHFULNESS}
        mean_curves: dict = defaultdict(dict)
        for (key, variant, kind), rows in ctx.curves.items():
            mean_curves[key].setdefault(variant, {})[kind] = np.round(np.mean(rows, axis=0), 4).tolist()
        result["faithfulness"]["curves"] = dict(mean_curves)
    for variant, stats in ctx.excitation.items():
        result["excitation"][variant] = stats.summary(ctx.model_set.classes, profile_blocks(list(stats.sums)))
    for variant, blocks in ctx.spatial.items():
        result["spatial"][variant] = _spatial_summary(blocks, config)
    data = ctx.source.describe()
    if data is not None:  # a folder of the user's images: which, how many, and what was left out
        result["data"] = data
    return result


def _pairs_summary(pairs: Records, variants: list[str], config: AnalysisConfig) -> dict:
    """Two-object scenes: each metric on the explained class's own object and on the other, and own - other."""
    summary = {
        m: _group(pairs, m, variants, config) for m in ("pointing", "pointing_other", "energy", "energy_other", "iou")
    }
    own_minus_other: dict = {}
    for metric in ("pointing", "energy"):
        own_minus_other[metric] = {}
        for key in pairs.configs(metric):
            own_minus_other[metric][key] = {}
            for v in variants:
                boot = paired_bootstrap(
                    {"other": pairs.get(f"{metric}_other", v, key), "own": pairs.get(metric, v, key)},
                    config.resamples,
                    config.confidence,
                    config.seed,
                )
                iv = boot.differences["other", "own"]
                own_minus_other[metric][key][v] = {**iv.to_dict(), "excludes_zero": iv.excludes_zero}
    summary["own_minus_other"] = own_minus_other
    return summary
