"""How far an image is from what a model was trained on: an out-of-domain score from the image's own pass.

A model of the built-in set knows 12 classes of emoji scenes; shown a photo of a cat, it still answers one of
them, often with high confidence. The score says when to distrust the answer. It is computed from the pooled
layer4 features and the logits of the pass that explains the image (``Capture(..., features=True)``), so it
costs no extra pass: a few small matrix products.

Scorers (each fitted on a set's training scenes; the one shipped is chosen by measurement, see
``attnviz.domain_fit``), higher = farther from the training scenes:

* ``energy``: minus the log-sum-exp of the logits (Liu et al. 2020); nothing to fit but the threshold;
* ``mahalanobis``: the smallest class-conditional Mahalanobis distance (shared covariance, Lee et al. 2018)
  in the space of the features' first ``k`` principal components;
* ``residual``: the squared norm of what those components leave out of the centred features, over its
  mean on the training scenes;
* ``mahalanobis+residual``: both, each over its mean on the training scenes, summed;
* ``knn``: the distance of the unit-length reduced features to their 10th nearest neighbour among a bank of
  training scenes' (Sun et al. 2022).

The fitted statistics (float32 tensors, well under 1 MB per model at ``k = 64``) are stored beside each
checkpoint as ``<set>/<variant>.domain.safetensors``, named in the manifest with their sha256 like the
weights; the threshold lives in the same file.

    from attnviz.domain import DomainModel
    scorer = loaded_set.domain_model("se")   # attnviz.weights.LoadedSet; None when not calibrated
    scores = scorer.score(features, logits)  # (batch,) float64, higher = farther; scorer.flags(scores) -> bool
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SCORERS = ("energy", "mahalanobis", "residual", "mahalanobis+residual", "knn")
COMPONENTS = 64  # principal components kept: 2048 x 64 float32 = 512 KB
KNN_BANK = 1000  # training scenes kept for the kNN scorer (1000 x 64 float32 = 256 KB)
KNN_K = 10


def _reduce(tensors: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    return (features.double() - tensors["mean"].double()) @ tensors["components"].double()


def _mahalanobis(tensors: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    z = _reduce(tensors, features)  # (B, k)
    diffs = z[:, None, :] - tensors["class_means"].double()[None]  # (B, C, k)
    distances = torch.einsum("bck,kl,bcl->bc", diffs, tensors["precision"].double(), diffs)
    return distances.min(dim=1).values


def _residual(tensors: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    centred = features.double() - tensors["mean"].double()
    components = tensors["components"].double()
    left = centred - (centred @ components) @ components.T
    return (left * left).sum(dim=1)


def _knn(tensors: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    z = torch.nn.functional.normalize(_reduce(tensors, features), dim=1)
    bank = tensors["bank"].double()
    distances = torch.cdist(z, bank)
    k = min(KNN_K, bank.shape[0])
    return distances.topk(k, dim=1, largest=False).values[:, -1]


def raw_score(scorer: str, tensors: dict[str, torch.Tensor], features: torch.Tensor,
              logits: torch.Tensor) -> torch.Tensor:
    """The scorer's value for each image of a batch (before any threshold), float64."""
    if scorer == "energy":
        return -torch.logsumexp(logits.double(), dim=1)
    if scorer == "mahalanobis":
        return _mahalanobis(tensors, features)
    if scorer == "residual":
        return _residual(tensors, features) / tensors["residual_scale"].double()
    if scorer == "mahalanobis+residual":
        return (_mahalanobis(tensors, features) / tensors["mahalanobis_scale"].double()
                + _residual(tensors, features) / tensors["residual_scale"].double())
    if scorer == "knn":
        return _knn(tensors, features)
    raise ValueError(f"unknown out-of-domain scorer {scorer!r}; choose one of {', '.join(SCORERS)}")


def fit_statistics(features: torch.Tensor, labels: torch.Tensor, n_classes: int,
                   components: int = COMPONENTS, bank: int = KNN_BANK, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every scorer's statistics from training scenes' pooled features (N, D) and their true labels (N,)."""
    x = features.double()
    mean = x.mean(dim=0)
    centred = x - mean
    k = min(components, x.shape[0] - 1, x.shape[1])
    # principal directions from the covariance's eigenvectors (D x D is 2048^2: fine once, at fitting)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / (x.shape[0] - 1))
    basis = eigenvectors[:, eigenvalues.argsort(descending=True)[:k]]
    basis = basis * torch.where(basis.sum(dim=0) < 0, -1.0, 1.0)  # a fixed sign per direction: deterministic
    z = centred @ basis
    class_means = torch.zeros(n_classes, k, dtype=torch.float64)
    within = torch.zeros(k, k, dtype=torch.float64)
    for c in range(n_classes):
        members = z[labels == c]
        if len(members):
            class_means[c] = members.mean(dim=0)
            d = members - class_means[c]
            within += d.T @ d
    covariance = within / max(1, x.shape[0] - n_classes) + 1e-6 * torch.eye(k, dtype=torch.float64)
    tensors = {"mean": mean, "components": basis, "class_means": class_means,
               "precision": torch.linalg.inv(covariance)}
    tensors["mahalanobis_scale"] = _mahalanobis(tensors, x).mean().reshape(1)
    tensors["residual_scale"] = _residual(tensors, x).mean().reshape(1)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:bank]
    tensors["bank"] = torch.nn.functional.normalize(z[order], dim=1)
    return {name: t.float().contiguous() for name, t in tensors.items()}


# What each scorer needs from the fitted statistics; only these are shipped for the chosen one.
NEEDS = {"energy": (), "mahalanobis": ("mean", "components", "class_means", "precision"),
         "residual": ("mean", "components", "residual_scale"),
         "mahalanobis+residual": ("mean", "components", "class_means", "precision", "mahalanobis_scale",
                                  "residual_scale"),
         "knn": ("mean", "components", "bank")}


@dataclass
class DomainModel:
    """One model's fitted scorer and threshold: ``score`` above ``threshold`` is out of domain."""

    scorer: str
    tensors: dict[str, torch.Tensor]
    threshold: float

    def __post_init__(self) -> None:
        # the scorers compute in float64: converted once here, not on every request
        self._float64 = {k: v.double() for k, v in self.tensors.items()}

    @classmethod
    def from_tensors(cls, stored: dict[str, torch.Tensor], scorer: str) -> DomainModel:
        tensors = {k: v.float() for k, v in stored.items() if k != "threshold"}
        missing = [k for k in NEEDS[scorer] if k not in tensors]
        if missing:
            raise ValueError(f"the statistics lack {', '.join(missing)} for the {scorer} scorer")
        return cls(scorer, tensors, float(stored["threshold"].reshape(-1)[0]))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        kept = {k: self.tensors[k] for k in NEEDS[self.scorer]}
        return {**kept, "threshold": torch.tensor([self.threshold], dtype=torch.float64)}

    def score(self, features: torch.Tensor, logits: torch.Tensor) -> np.ndarray:
        """(batch,) scores, higher = farther from the training scenes."""
        with torch.no_grad():
            return raw_score(self.scorer, self._float64, features.cpu(), logits.detach().float().cpu()).numpy()

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

