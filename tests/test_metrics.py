"""Every metric of attnviz.metrics on hand-made maps, masks and toy models whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attnviz.metrics import (
    area_share,
    choose_threshold,
    curve_auc,
    deletion_insertion,
    distance_to_mask,
    energy_in_mask,
    gaussian_blur,
    iou_curve,
    mask_iou,
    paired_bootstrap,
    pointing_game,
    pointing_hits,
    rank_accuracy,
    relevance_order,
    road,
    road_impute,
    road_jobs,
)


def square_mask(size: int = 64, top: int = 24, left: int = 24, side: int = 16) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


class RegionModel(nn.Module):
    """Two classes; p(class 0) is the mean of channel 0 over a region, so a curve's values are known exactly."""

    def __init__(self, region: np.ndarray) -> None:
        super().__init__()
        self.region = torch.from_numpy(region.astype(np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = ((x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()).clamp(1e-6, 1 - 1e-6)
        return torch.stack([p.log(), (1 - p).log()], dim=1)


# --------------------------------------------------------------------------- localisation


def test_map_equal_to_mask_scores_one():
    mask = square_mask()
    saliency = mask.astype(np.float32)
    assert energy_in_mask(saliency, mask) == pytest.approx(1.0)
    assert pointing_game(saliency, mask)
    for threshold in (0.05, 0.5, 1.0):
        assert mask_iou(saliency, mask, threshold) == pytest.approx(1.0)


def test_map_outside_mask_scores_zero():
    mask = square_mask()
    saliency = np.zeros(mask.shape, np.float32)
    saliency[:8, :8] = 1.0  # more than 15 px from the mask
    assert energy_in_mask(saliency, mask) == pytest.approx(0.0)
    assert not pointing_game(saliency, mask)
    assert mask_iou(saliency, mask, 0.5) == pytest.approx(0.0)


def test_uniform_map_scores_the_mask_area_share():
    mask = square_mask()
    share = 16 * 16 / 64**2
    saliency = np.full(mask.shape, 0.7, np.float32)
    assert area_share(mask) == pytest.approx(share)
    assert energy_in_mask(saliency, mask) == pytest.approx(share)
    assert mask_iou(saliency, mask, 0.5) == pytest.approx(share)  # the whole image is the region


def test_flat_map_points_nowhere():
    mask = square_mask(top=0, left=0)  # the first pixel, which argmax would pick, is on the object
    assert not pointing_game(np.full(mask.shape, 0.3, np.float32), mask)


def test_map_without_mass_counts_as_uniform_for_energy_and_has_no_region():
    mask = square_mask()
    empty = np.zeros(mask.shape, np.float32)
    assert energy_in_mask(empty, mask) == pytest.approx(area_share(mask))
    assert mask_iou(empty, mask, 0.5) == 0.0


@pytest.mark.parametrize(("inside_first", "hit"), [(True, True), (False, False)])
def test_pointing_game_takes_the_first_of_several_maxima_in_raster_order(inside_first, hit):
    mask = square_mask()
    saliency = np.zeros(mask.shape, np.float32)
    saliency[30, 30] = saliency[60, 60] = 1.0  # one on the object, one 29 px from it
    if not inside_first:
        saliency = saliency[::-1, ::-1].copy()
        mask = mask[::-1, ::-1]  # the far maximum now comes first
    assert pointing_game(saliency, mask) is hit


def test_empty_mask_scores_0_in_every_localisation_metric():
    empty = np.zeros((32, 32), bool)
    saliency = np.random.default_rng(0).random((32, 32))
    assert not pointing_game(saliency, empty, tolerance=1000)
    assert energy_in_mask(saliency, empty) == 0.0
    assert energy_in_mask(np.zeros((32, 32)), empty) == 0.0
    assert rank_accuracy(saliency, empty) == 0.0


def test_rank_accuracy_is_1_for_the_mask_itself_and_0_for_a_map_beside_it():
    mask = square_mask()
    beside = np.roll(mask, 20, axis=1).astype(np.float32)  # the square moved off itself
    assert rank_accuracy(mask.astype(np.float32) + 0.5, mask) == 1.0
    assert rank_accuracy(beside, mask) == 0.0


def test_rank_accuracy_of_a_flat_map_is_the_mask_area_share():
    mask = square_mask()
    assert rank_accuracy(np.full(mask.shape, 0.3), mask) == pytest.approx(area_share(mask))


def test_rank_accuracy_shares_the_places_at_the_cut_among_the_tied_pixels():
    mask = np.zeros((1, 6), bool)
    mask[0, :3] = True  # K = 3
    saliency = np.array([[0.9, 0.2, 0.5, 0.5, 0.5, 0.5]])  # one above the cut, 2 places for 4 tied, 1 of them inside
    assert rank_accuracy(saliency, mask) == pytest.approx((1 + 2 * 1 / 4) / 3)


def test_rank_accuracy_takes_a_batch():
    masks = np.stack([square_mask(), square_mask(top=0, left=0)])
    maps = np.stack([masks[0], masks[0]]).astype(np.float32)
    np.testing.assert_allclose(rank_accuracy(maps, masks), [1.0, 0.0])


@pytest.mark.parametrize(("peak", "hit"), [((50, 65), True), ((50, 66), False), ((59, 62), True), ((59, 63), False)])
def test_pointing_tolerance_is_exactly_15_pixels(peak, hit):
    mask = np.zeros((128, 128), bool)
    mask[50, 50] = True
    saliency = np.zeros(mask.shape, np.float32)
    saliency[peak] = 1.0  # (59, 62) is 9 and 12 px away: 15 px on the diagonal
    assert pointing_game(saliency, mask, tolerance=15) is hit


def test_pointing_hits_take_a_batch_and_its_distances():
    masks = np.stack([square_mask(), square_mask(top=0, left=0)])
    maps = np.zeros((2, 64, 64), np.float32)
    maps[:, 30, 30] = 1.0  # on the first object, 15+ px from the second (which ends at 15)
    distances = np.stack([distance_to_mask(m) for m in masks])
    assert pointing_hits(maps, distances, 15).tolist() == [True, False]
    assert np.isinf(distance_to_mask(np.zeros((4, 4), bool))).all()


def test_iou_threshold_picks_the_region_above_it():
    mask = square_mask()
    ring = square_mask(top=20, left=20, side=24) & ~mask
    saliency = np.where(mask, 1.0, np.where(ring, 0.5, 0.0)).astype(np.float32)
    assert mask_iou(saliency, mask, 0.6) == pytest.approx(1.0)
    assert mask_iou(saliency, mask, 0.5) == pytest.approx(mask.sum() / (mask | ring).sum())
    # relative to the map's own maximum: scaling the map changes nothing
    assert mask_iou(saliency * 0.2, mask, 0.6) == pytest.approx(1.0)


def test_choose_threshold_maximises_mean_iou():
    mask = square_mask()
    ring = square_mask(top=20, left=20, side=24) & ~mask
    saliency = np.where(mask, 1.0, np.where(ring, 0.5, 0.0)).astype(np.float32)
    grid = [0.25, 0.5, 0.75]
    ious = iou_curve(np.stack([saliency, saliency]), np.stack([mask, mask]), grid)
    best, means = choose_threshold(ious, grid)
    assert best == 0.75
    assert means.tolist() == pytest.approx([mask.sum() / (mask | ring).sum()] * 2 + [1.0])


# --------------------------------------------------------------------------- deletion and insertion


def toy_curves(saliency: np.ndarray, steps: int = 8):
    region = np.zeros((8, 8), bool)
    region[:4, :4] = True  # a quarter of the image
    model = RegionModel(region)
    image = torch.ones(1, 8, 8)
    return deletion_insertion(model, image, torch.zeros(1, 8, 8), saliency[None], target=0, steps=steps, batch_size=5)


def test_deletion_and_insertion_follow_the_known_curve_for_a_perfect_map():
    region = np.zeros((8, 8), np.float32)
    region[:4, :4] = 1.0
    curves = toy_curves(region)
    # 8 of the 64 pixels per step: the region's 16 pixels go (or come) in the first two steps
    assert curves.deletion[0] == pytest.approx([1, 0.5, 0, 0, 0, 0, 0, 0, 0], abs=1e-5)
    assert curves.insertion[0] == pytest.approx([0, 0.5, 1, 1, 1, 1, 1, 1, 1], abs=1e-5)
    assert curve_auc(curves.deletion)[0] == pytest.approx(0.125, abs=1e-5)  # a / 2 for a region of area a
    assert curve_auc(curves.insertion)[0] == pytest.approx(0.875, abs=1e-5)  # 1 - a / 2


def test_deletion_auc_is_high_for_a_map_that_points_away():
    region = np.zeros((8, 8), np.float32)
    region[:4, :4] = 1.0
    curves = toy_curves(1 - region)
    assert curve_auc(curves.deletion)[0] == pytest.approx(0.875, abs=1e-5)
    assert curve_auc(curves.insertion)[0] == pytest.approx(0.125, abs=1e-5)


def test_curve_auc_is_the_trapezoid_over_0_to_1():
    assert curve_auc(np.linspace(0, 1, 11)) == pytest.approx(0.5)
    assert curve_auc(np.array([[1.0, 1.0], [0.0, 1.0]])).tolist() == pytest.approx([1.0, 0.5])


def test_relevance_order_breaks_ties_by_the_given_permutation():
    saliency = np.array([[0.0, 1.0], [0.0, 0.0]])
    assert relevance_order(saliency).tolist() == [[1, 0], [2, 3]]
    assert relevance_order(saliency, np.array([3, 0, 2, 1])).tolist() == [[3, 0], [2, 1]]


def test_gaussian_blur_keeps_a_constant_image_and_spreads_a_point():
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat, atol=1e-6)
    point = torch.zeros(1, 1, 17, 17)
    point[0, 0, 8, 8] = 1.0
    blurred = gaussian_blur(point, 2.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert blurred[0, 0, 8, 8] < 0.1 and blurred[0, 0, 8, 10] > 0


# --------------------------------------------------------------------------- ROAD


def road_scene():
    region = np.zeros((16, 16), bool)
    region[4:12, 4:12] = True
    image = torch.zeros(3, 16, 16)
    image[:, torch.from_numpy(region)] = 1.0
    noise = np.random.default_rng(0).random((16, 16)).astype(np.float32) * 0.01  # no ties among the pixels
    return RegionModel(region), image, region.astype(np.float32) + noise


def test_road_matches_pytorch_grad_cam_averagers():
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, image, saliency = road_scene()
    image = image * 0.5 + torch.from_numpy(np.random.default_rng(1).random((3, 16, 16)).astype(np.float32)) * 0.5
    percentiles = [20, 40, 60, 80]
    ours = road(model, image, saliency[None], target=0, percentiles=percentiles)
    targets = [ClassifierOutputSoftmaxTarget(0)]
    with torch.random.fork_rng():  # pytorch-grad-cam's imputer draws from the global state
        torch.manual_seed(0)
        morf = ROADMostRelevantFirstAverage(percentiles)(image[None], saliency[None], targets, model)
        lerf = ROADLeastRelevantFirstAverage(percentiles)(image[None], saliency[None], targets, model)
    # the imputer's noise (0.01 per infilled pixel) is seeded per job here and globally there
    assert ours.most_relevant_first[0] == pytest.approx(float(morf[0]), abs=5e-3)
    assert ours.least_relevant_first[0] == pytest.approx(float(lerf[0]), abs=5e-3)


def test_road_rewards_the_map_of_the_pixels_the_model_uses():
    model, image, saliency = road_scene()
    scores = road(model, image, np.stack([saliency, 1 - saliency]), target=0)
    assert scores.most_relevant_first[0] < -0.3  # removing the region first ruins the score
    assert abs(scores.least_relevant_first[0]) < 0.05  # removing the rest first barely changes it
    assert scores.combined[0] > 0.15 > -0.15 > scores.combined[1]


def test_road_imputation_depends_only_on_the_job():
    _, image, saliency = road_scene()
    jobs = road_jobs(image, saliency[None], [50], seed=3)
    assert len(jobs) == 2  # most and least relevant first
    with torch.random.fork_rng():
        torch.manual_seed(123)
        first = road_impute(jobs[0])
        torch.manual_seed(456)
        assert np.array_equal(first, road_impute(jobs[0]))


# --------------------------------------------------------------------------- paired bootstrap


def test_bootstrap_interval_covers_a_known_difference_and_excludes_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.2, 300)
    b = a + 0.1 + rng.normal(0, 0.05, 300)
    result = paired_bootstrap({"a": a, "b": b}, resamples=2000, seed=0)
    diff = result.differences["a", "b"]
    assert diff.low < 0.1 < diff.high
    assert diff.excludes_zero
    assert result.means["a"].low < a.mean() < result.means["a"].high


def test_bootstrap_interval_includes_zero_when_there_is_no_difference():
    rng = np.random.default_rng(1)
    a = rng.normal(0.5, 0.2, 300)
    b = a + rng.normal(0, 0.05, 300)
    diff = paired_bootstrap({"a": a, "b": b}, seed=0).differences["a", "b"]
    assert diff.low < 0 < diff.high
    assert not diff.excludes_zero


def test_pairing_finds_a_small_consistent_difference_that_overlapping_means_hide():
    rng = np.random.default_rng(2)
    a = rng.normal(0.5, 0.3, 100)  # images differ a lot ...
    b = a + 0.02 + rng.normal(0, 0.005, 100)  # ... but b is always a little higher on the same image
    result = paired_bootstrap({"a": a, "b": b}, seed=0)
    assert result.means["b"].low < result.means["a"].high  # the two means' intervals overlap
    assert result.differences["a", "b"].low > 0


def test_bootstrap_is_reproducible_and_orders_differences_later_minus_earlier():
    samples = {"resnet50": np.array([0.0, 1.0, 1.0, 0.0]), "se": np.ones(4), "cbam": np.zeros(4)}
    first = paired_bootstrap(samples, resamples=500, seed=7)
    again = paired_bootstrap(samples, resamples=500, seed=7)
    assert first == again
    assert list(first.differences) == [("resnet50", "se"), ("resnet50", "cbam"), ("se", "cbam")]
    assert first.differences["se", "cbam"].mean == -1.0
    constant = first.means["se"]
    assert (constant.mean, constant.low, constant.high) == (1.0, 1.0, 1.0)


def test_bootstrap_refuses_samples_of_different_lengths():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap({"a": np.zeros(3), "b": np.zeros(4)})
