"""Scenes as the model set sees them (the CAMs to measure) and one pass of a batch through the capture core."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from attnviz.analysis.config import SCENE_SEED, CamConfig
from attnviz.explainer import ModelExplainer
from attnviz.images import preprocess
from attnviz.localisation import view_mask as _view_mask
from attnviz.metrics import distance_to_mask
from attnviz.scenes import CLASSES, make_scene
from attnviz.settings import SCORE_CAM_BATCH
from attnviz.weights import Preprocessing


@dataclass
class Item:
    """One CAM to measure: a scene as the model set sees it, the class explained and its object's mask."""

    split: str
    scene: int
    target: int  # class index of the model set
    tensor: torch.Tensor  # (3, S, S)
    own: np.ndarray  # (S, S) bool: the target's object
    other: np.ndarray | None  # (S, S) bool: the other object of a two-object scene
    own_distance: np.ndarray = field(repr=False, default=None)
    other_distance: np.ndarray | None = field(repr=False, default=None)


def scene_items(split: str, index: int, classes: list[str], preprocessing: Preprocessing) -> list[Item]:
    """The CAMs of one scene: one for a single object, one per class for a two-object scene."""
    scene = make_scene(SCENE_SEED, split, index)
    tensor = preprocess(Image.fromarray(scene.image), preprocessing).tensor[0]
    masks = [_view_mask(m, preprocessing) for m in scene.masks]
    distances = [distance_to_mask(m) for m in masks]
    items = []
    for i, label in enumerate(scene.labels):
        j = 1 - i if len(masks) == 2 else None
        items.append(
            Item(
                split=split,
                scene=index,
                target=classes.index(CLASSES[label]),
                tensor=tensor,
                own=masks[i],
                other=None if j is None else masks[j],
                own_distance=distances[i],
                other_distance=None if j is None else distances[j],
            )
        )
    return items


@dataclass
class BatchPass:
    """What one forward (and one backward) of a batch gave: logits, a map per CAM config, the attention records."""

    logits: torch.Tensor  # (B, classes)
    maps: dict[str, np.ndarray]  # config key -> (B, S, S) in [0, 1]
    channel: dict[str, np.ndarray]  # block -> (B, C): the records of kind "channel"
    spatial: dict[str, np.ndarray]  # block -> (B, h, w): the records of kind "spatial"


def explain_batch(
    explainer: ModelExplainer,
    x: torch.Tensor,
    targets: list[int],
    configs: list[CamConfig],
    scorecam_batch: int = SCORE_CAM_BATCH,
) -> BatchPass:
    """One pass of the batch through the capture core (``ModelExplainer.explain_batch``), keyed by config."""
    out = explainer.explain_batch(x, list(targets), [(c.method, c.layer) for c in configs], scorecam_batch)
    return BatchPass(logits=out.logits, maps={c.key: out.maps[c.method, c.layer] for c in configs},
                     channel=out.of_kind("channel"), spatial=out.of_kind("spatial"))
