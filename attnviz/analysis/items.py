"""Scenes as the model set sees them (the CAMs to measure), where the items come from (the generated scenes, or a
folder of the user's images: ``attnviz.analysis.dataset``), and one pass of a batch through the capture core."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from attnviz.analysis.config import SCENE_SEED, AnalysisConfig, CamConfig
from attnviz.explainer import ModelExplainer
from attnviz.images import preprocess
from attnviz.localisation import view_mask as _view_mask
from attnviz.metrics import distance_to_mask
from attnviz.scenes import CLASSES, make_scene
from attnviz.settings import SCORE_CAM_BATCH
from attnviz.weights import Preprocessing


@dataclass
class Item:
    """One CAM to measure: an image as the model set sees it, the class explained and its object's mask."""

    split: str
    scene: int  # the scene's index in its split (a folder's image: its position in the split)
    target: int | None  # class index of the model set; None: each model explains its own top-1
    tensor: torch.Tensor  # (3, S, S)
    own: np.ndarray  # (S, S) bool: the target's object
    other: np.ndarray | None  # (S, S) bool: the other object of a two-object scene
    own_distance: np.ndarray = field(repr=False, default=None)
    other_distance: np.ndarray | None = field(repr=False, default=None)


def image_items(split: str, index: int, image: Image.Image, masks: list[np.ndarray], targets: list[int | None],
                preprocessing: Preprocessing) -> list[Item]:
    """The CAMs of one image with one or two objects (a mask of the image's size and a target each): the image
    and its masks through the set's own resize and crop, so that the masks lie on the pixels the model sees."""
    tensor = preprocess(image, preprocessing).tensor[0]
    masks = [_view_mask(m, preprocessing) for m in masks]
    distances = [distance_to_mask(m) for m in masks]
    items = []
    for i, target in enumerate(targets):
        j = 1 - i if len(masks) == 2 else None
        items.append(
            Item(
                split=split,
                scene=index,
                target=target,
                tensor=tensor,
                own=masks[i],
                other=None if j is None else masks[j],
                own_distance=distances[i],
                other_distance=None if j is None else distances[j],
            )
        )
    return items


def scene_items(split: str, index: int, classes: list[str], preprocessing: Preprocessing) -> list[Item]:
    """The CAMs of one scene: one for a single object, one per class for a two-object scene."""
    scene = make_scene(SCENE_SEED, split, index)
    targets = [classes.index(CLASSES[label]) for label in scene.labels]
    return image_items(split, index, Image.fromarray(scene.image), list(scene.masks), targets, preprocessing)


class SceneSource:
    """attnviz's generated scenes, regenerated from the built-in dataset's seed: scenes 0..n-1 of each split, each
    CAM explaining the scene's true class. A folder of the user's images (``dataset.FolderSource``) has the same
    methods."""

    kind = "scenes"
    top1 = False  # every item has its true class
    target = "the true class of each scene; in a two-object scene each of its two classes in turn"

    def __init__(self, classes: list[str], preprocessing: Preprocessing) -> None:
        self.classes, self.preprocessing = classes, preprocessing

    def items(self, split: str, index: int) -> list[Item]:
        return scene_items(split, index, self.classes, self.preprocessing)

    def items_per_scene(self, split: str) -> int:
        """CAMs per scene: two in a two-object scene (one per class), else one."""
        return 2 if split == "pairs" else 1

    def sample(self, count: int) -> list[int]:
        """The test positions of a section that measures ``count`` of them: the first ``count`` scenes."""
        return list(range(count))

    def skipped_parts(self, config: AnalysisConfig) -> dict[str, str]:
        """Parts of the analysis this data cannot have, with the reason: none for the scenes."""
        return {}

    def samples(self) -> dict:
        """What the result's "samples" says about where the items come from."""
        return {"scene_seed": SCENE_SEED,
                "note": "scenes 0..n-1 of each split, regenerated with attnviz.scenes.make_scene(seed, split, index); "
                        "faithfulness and Score-CAM use the first test scenes"}

    def threshold_sample(self, count: int) -> str:
        """Where the IoU threshold is chosen, for the report."""
        return f"val, {count} scenes"

    def describe(self) -> dict | None:
        """The result's "data" entry: None for the scenes (the default)."""
        return None


@dataclass
class BatchPass:
    """What one forward (and one backward) of a batch gave: logits, a map per CAM config, the attention records."""

    logits: torch.Tensor  # (B, classes)
    maps: dict[str, np.ndarray]  # config key -> (B, S, S) in [0, 1]
    channel: dict[str, np.ndarray]  # block -> (B, C): the records of kind "channel"
    spatial: dict[str, np.ndarray]  # block -> (B, h, w): the records of kind "spatial"
    targets: np.ndarray  # (B,) int: the class each map explains (an item's None target: the model's top-1)


def explain_batch(
    explainer: ModelExplainer,
    x: torch.Tensor,
    targets: list[int | None],
    configs: list[CamConfig],
    scorecam_batch: int = SCORE_CAM_BATCH,
) -> BatchPass:
    """One pass of the batch through the capture core (``ModelExplainer.explain_batch``), keyed by config; a None
    target explains the model's top-1 class of that image, from the same pass."""
    out = explainer.explain_batch(x, list(targets), [(c.method, c.layer) for c in configs], scorecam_batch)
    return BatchPass(logits=out.logits, maps={c.key: out.maps[c.method, c.layer] for c in configs},
                     channel=out.of_kind("channel"), spatial=out.of_kind("spatial"),
                     targets=np.asarray(out.targets, np.int64))
