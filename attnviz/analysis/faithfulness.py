"""Faithfulness: deletion / insertion curves and ROAD of every layer4 method on the first test scenes (a folder's
images: a random subset), each scored on the class the model's maps explain."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from attnviz.analysis.config import CamConfig
from attnviz.metrics import (
    curve_auc,
    deletion_insertion,
    gaussian_blur,
    road_impute,
    road_jobs,
    road_scores,
    road_worker_start,
    target_probability,
)

if TYPE_CHECKING:
    from attnviz.analysis.engine import Engine, Unit
    from attnviz.analysis.run import _Context


class Imputer:
    """Runs ROAD's imputation jobs inline or in worker processes (scipy's solver uses one core)."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=road_worker_start
            )

    def submit(self, jobs):
        """Start the jobs (in the background when there are workers); ``list()`` the result to wait for them."""
        if self.pool is None:
            return (road_impute(job) for job in jobs)
        return self.pool.map(road_impute, jobs, chunksize=4)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def measure_faithfulness(ctx: _Context, engine: Engine) -> None:
    """Deletion / insertion curves and ROAD of every layer4 method on the faithfulness scenes, one unit per scene
    (ROAD's imputation in ``config.workers`` processes, shared by the units run here)."""
    from attnviz.analysis.engine import Unit

    ctx.imputer = Imputer(ctx.config.workers)
    try:
        engine.run(ctx, [Unit("faithfulness", "test", k, k + 1, k) for k in sorted(ctx.faith_items)], "faithfulness")
    finally:
        ctx.imputer.close()
        ctx.imputer = None


def faithfulness_unit(ctx: _Context, unit: Unit) -> None:
    """Deletion / insertion curves and ROAD of every layer4 method of every model on faithfulness scene
    ``unit.start`` (its maps, probabilities and targets from the test pass are in ``ctx``)."""
    config = ctx.config
    i = unit.start
    item = ctx.faith_items[i]
    keys = [CamConfig(m, "layer4").key for m in config.methods]
    road_index = [k for k, m in enumerate(config.methods) if m in config.road_methods]
    road_keys = [keys[k] for k in road_index]
    records = ctx.records["faithfulness"]
    imputer = ctx.imputer or Imputer(0)
    sigma = config.blur_sigma * ctx.model_set.preprocessing.crop / 224
    baseline = gaussian_blur(item.tensor[None], sigma)[0]
    tiebreak = np.random.default_rng([config.seed, 1, i]).permutation(item.own.size)
    pending = {}
    for v, variant in enumerate(ctx.explainers):  # ROAD's imputation runs while the curves are scored
        seed = int(np.random.default_rng([config.seed, 2, i, v]).integers(2**31))
        maps = np.asarray(ctx.faith_maps[i, variant])[road_index]
        jobs = road_jobs(item.tensor, maps, config.road_percentiles, seed) if road_index else []
        pending[variant] = imputer.submit(jobs)
    for variant, explainer in ctx.explainers.items():
        model = explainer.model
        original = ctx.faith_probability[i, variant]
        target = ctx.faith_target[i, variant]
        with torch.no_grad():
            blurred = float(target_probability(model(baseline[None]), torch.tensor([target]))[0])
        found = deletion_insertion(model, item.tensor, baseline, ctx.faith_maps[i, variant], target, config.steps,
                                   config.batch_size, tiebreak, (original, blurred))
        for k, key in enumerate(keys):
            ctx.curves[key, variant, "deletion"].append(found.deletion[k])
            ctx.curves[key, variant, "insertion"].append(found.insertion[k])
            records.add("deletion", variant, key, curve_auc(found.deletion[k]))
            records.add("insertion", variant, key, curve_auc(found.insertion[k]))
    for variant, explainer in ctx.explainers.items():
        imputed = list(pending.pop(variant))
        if not road_keys:
            continue
        scores = road_scores(explainer.model, ctx.faith_probability[i, variant], ctx.faith_target[i, variant],
                             imputed, len(road_keys), len(config.road_percentiles), config.batch_size)
        for k, key in enumerate(road_keys):
            records.add("road_morf", variant, key, scores.most_relevant_first[k])
            records.add("road_lerf", variant, key, scores.least_relevant_first[k])
            records.add("road_combined", variant, key, scores.combined[k])
