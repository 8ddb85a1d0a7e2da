"""attnviz's localisation metrics against Quantus' on the same maps and masks.

The pointing game (at tolerance 0: Quantus' has none), energy in mask (Quantus' relevance mass accuracy) and
relevance rank accuracy agree with Quantus 0.6.0 where neither side has a policy to apply; where attnviz's
policy for ties, empty masks and maps without mass differs from Quantus' by design (attnviz.metrics' docstring),
the difference is exactly that policy. Quantus is a test dependency (requirements-nodeps.txt): without it these
tests skip, and fail when CI=true.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from attnviz.metrics import area_share, distance_to_mask, energy_in_mask, pointing_hits, rank_accuracy


@pytest.fixture(scope="module")
def quantus():
    try:
        import quantus
    except ImportError as exc:
        message = f"quantus is not installed ({exc}): bash scripts/setup.sh 1 installs it (requirements-nodeps.txt)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return quantus


def score(quantus, name: str, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Quantus' metric ``name`` on (N, H, W) maps and masks, as given: no normalising, no absolute values."""
    metric = getattr(quantus, name)(abs=False, normalise=False, disable_warnings=True)
    x = np.zeros((len(maps), 1, *maps.shape[1:]), np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = metric(model=None, x_batch=x, y_batch=np.zeros(len(maps), int), a_batch=maps[:, None].copy(),
                        s_batch=masks[:, None].astype(np.float64))
    return np.asarray(values, np.float64)


def pointing_at_zero(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return pointing_hits(maps, np.stack([distance_to_mask(m) for m in masks]), tolerance=0)


def random_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Rectangles of random place and size, none empty."""
    masks = np.zeros((n, size, size), bool)
    for mask in masks:
        top, left = rng.integers(0, size - 2, 2)
        height, width = rng.integers(2, size // 2, 2)
        mask[top : top + height, left : left + width] = True
    return masks


def cases(seed: int, n: int = 40, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Maps without ties (continuous random values, a bump on the object for half of them) and their masks."""
    rng = np.random.default_rng(seed)
    masks = random_masks(rng, n, size)
    maps = rng.random((n, size, size))
    maps[::2] += 0.8 * masks[::2] * rng.random((n // 2, size, size))
    return maps, masks


def test_pointing_game_agrees_with_quantus_at_tolerance_0(quantus):
    maps, masks = cases(1)
    ours = pointing_at_zero(maps, masks)
    assert 0 < ours.sum() < len(ours)  # hits and misses both
    np.testing.assert_array_equal(ours, score(quantus, "PointingGame", maps, masks).astype(bool))


def test_energy_in_mask_agrees_with_relevance_mass_accuracy(quantus):
    maps, masks = cases(2)
    theirs = score(quantus, "RelevanceMassAccuracy", maps, masks)
    np.testing.assert_allclose(energy_in_mask(maps, masks), theirs, rtol=1e-12)


def test_rank_accuracy_agrees_with_relevance_rank_accuracy(quantus):
    maps, masks = cases(3)
    theirs = score(quantus, "RelevanceRankAccuracy", maps, masks)
    assert len(np.unique(theirs)) > 5  # a spread of values, not all 0 or 1
    np.testing.assert_allclose(rank_accuracy(maps, masks), theirs, rtol=1e-12)


def test_pointing_game_with_several_maxima_is_quantus_with_only_the_first_in_raster_order(quantus):
    rng = np.random.default_rng(4)
    masks = random_masks(rng, 40, 12)
    maps = rng.integers(0, 4, (40, 12, 12)).astype(np.float64)  # four levels: many maxima per map
    first = maps.reshape(40, -1).argmax(axis=1)
    lowered = maps.reshape(40, -1) - 0.5 * (maps.reshape(40, -1) == maps.reshape(40, -1).max(axis=1, keepdims=True))
    lowered[np.arange(40), first] += 0.5  # every maximum but the first in raster order a little lower
    lowered = lowered.reshape(maps.shape)
    ours = pointing_at_zero(maps, masks)
    any_maximum = score(quantus, "PointingGame", maps, masks).astype(bool)
    assert (any_maximum & ~ours).any()  # the policies part on these maps...
    np.testing.assert_array_equal(ours, score(quantus, "PointingGame", lowered, masks).astype(bool))  # ...as stated


def with_a_varied_map(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The batch plus one map that is not constant: Quantus refuses a batch whose every value is the same."""
    varied = np.random.default_rng(0).random(maps.shape[1:])
    return np.concatenate([maps, varied[None]]), np.concatenate([masks, masks[:1]])


def test_flat_map_misses_in_attnviz_and_hits_in_quantus(quantus):
    masks = random_masks(np.random.default_rng(5), 3, 12)
    flat = np.full(masks.shape, 0.4)
    assert not pointing_at_zero(flat, masks).any()
    assert score(quantus, "PointingGame", *with_a_varied_map(flat, masks))[:3].astype(bool).all()


def tie_orders(values: np.ndarray, level: float) -> list[np.ndarray]:
    """One tie-free copy of ``values`` per order of its pixels at ``level`` (earlier in the order: higher)."""
    tied = np.flatnonzero(values.ravel() == level)
    copies = []
    for order in itertools.permutations(tied):
        copy = values.ravel().copy()
        copy[list(order)] += 0.01 * np.arange(len(order), 0, -1) / len(order)  # below the gap to the next level
        copies.append(copy.reshape(values.shape))
    return copies


def test_rank_accuracy_with_ties_at_the_cut_is_quantus_averaged_over_every_order_of_them(quantus):
    values = np.zeros((4, 4))
    values[0, :3] = 1.0  # three pixels above the cut, two of them on the object
    values[[1, 2, 3, 3, 3], [1, 2, 0, 1, 3]] = 0.5  # five tied at the cut, for the 2 places left: two on the object
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = mask[1, 1] = mask[2, 2] = mask[0, 3] = True  # K = 5
    orders = np.stack(tie_orders(values, 0.5))
    theirs = score(quantus, "RelevanceRankAccuracy", orders, np.repeat(mask[None], len(orders), axis=0))
    assert len(orders) == 120 and theirs.min() < theirs.max()  # the order matters to Quantus
    assert rank_accuracy(values, mask) == pytest.approx(theirs.mean(), abs=1e-12)
    assert rank_accuracy(values, mask) == pytest.approx((2 + 2 * 2 / 5) / 5)


def test_empty_mask_scores_0_in_attnviz_where_quantus_gives_nan_or_a_hit(quantus):
    maps, _ = cases(6, n=4)
    empty = np.zeros(maps.shape, bool)
    for ours in (pointing_at_zero(maps, empty), energy_in_mask(maps, empty), rank_accuracy(maps, empty)):
        np.testing.assert_array_equal(ours, 0)
    assert np.isnan(score(quantus, "RelevanceMassAccuracy", maps, empty)).all()
    assert np.isnan(score(quantus, "RelevanceRankAccuracy", maps, empty)).all()
    # Quantus writes NaN into its boolean hits, which reads as True: a hit on nothing
    assert score(quantus, "PointingGame", maps, empty).astype(bool).all()


def test_map_without_mass_has_the_area_share_in_attnviz_where_quantus_gives_nan(quantus):
    _, masks = cases(7, n=4)
    zeros = np.zeros(masks.shape)
    np.testing.assert_allclose(energy_in_mask(zeros, masks), area_share(masks))
    assert np.isnan(score(quantus, "RelevanceMassAccuracy", *with_a_varied_map(zeros, masks))[:4]).all()


def test_negative_values_are_no_mass_in_attnviz_and_count_in_quantus(quantus):
    maps, masks = cases(8)
    signed = maps - 0.6  # Quantus' default abs=False sums the negative values too
    theirs_clipped = score(quantus, "RelevanceMassAccuracy", np.maximum(signed, 0), masks)
    np.testing.assert_allclose(energy_in_mask(signed, masks), theirs_clipped, rtol=1e-12)
    assert not np.allclose(energy_in_mask(signed, masks), score(quantus, "RelevanceMassAccuracy", signed, masks))
