"""The training CLI on a handful of generated scenes: loss goes down, checkpoints load, runs resume."""

import json
import math
from pathlib import Path

import pytest
import torch

from attnviz.designs import TRAINING_DESIGNS
from attnviz.recipe import RECIPES, Recipe, augment, batch_indices, recipe_named
from attnviz.scenes import CLASSES, generate_split
from attnviz.train import main, register, train
from attnviz.weights import Manifest, load_model_set, sha256_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, installed) -> Path:
    """Version 2 scenes (several designs, and the unseen-design split), as the built-in set is trained on."""
    root = tmp_path_factory.mktemp("scenes")
    generate_split(root, "train", 8, workers=1, progress=False, version=2)
    for split in ("val", "test", "unseen", "unseen_design"):
        generate_split(root, split, 4, workers=1, progress=False, version=2)
    return root


def _recipe(steps: int) -> Recipe:
    return Recipe(batch_size=8, phases=[(64, 8 * (steps - 1))], finetune=(64, 8, 1e-4), bf16=False)


def test_tiny_training_run_lowers_the_loss_and_registers_a_set_that_loads(scenes, tmp_path):
    weights_dir = tmp_path / "weights"
    result = train(
        "cbam",
        scenes,
        weights_dir / "builtin",
        tmp_path / "state.pt",
        _recipe(8),
        torch.device("cpu"),
        progress=False,
        log_every=1,
    )
    losses = [h["step_loss"] for h in result["history"]]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert set(result["accuracy_top1_224px_fp32"]) == {"val", "test", "unseen_glyph", "unseen_design"}
    assert result["evaluated_on"] == {"val": 4, "test": 4, "unseen_glyph": 4, "unseen_design": 4}
    assert result["scenes"] == {"version": 2, "seed": 0, "training_designs": list(TRAINING_DESIGNS)}
    assert register(weights_dir / "builtin", weights_dir) == ["cbam"]
    model_set = Manifest(weights_dir).get("builtin")
    entry = model_set.models["cbam"]
    assert entry.accuracy["scenes"]["unseen_design"] == 4
    assert "--version 2" in entry.accuracy["measured"] and "4 unseen_design scenes" in entry.accuracy["measured"]
    assert model_set.description.startswith("ResNet50 + CBAM trained by attnviz")
    assert all(design in model_set.description for design in TRAINING_DESIGNS)
    assert entry.sha256 == sha256_of(weights_dir / "builtin" / "cbam.safetensors")
    assert entry.extra["recipe"]["batch_size"] == 8 and "train_minutes" in entry.extra
    loaded = load_model_set(None, weights_dir)
    assert loaded.name == "builtin" and loaded.classes == CLASSES and list(loaded.models) == ["cbam"]


def test_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(scenes, tmp_path, capsys):
    from safetensors.torch import load_file

    cpu = torch.device("cpu")
    straight = train("se", scenes, tmp_path / "a", tmp_path / "a.pt", _recipe(4), cpu, progress=False)
    stopped = train("se", scenes, tmp_path / "b", tmp_path / "b.pt", _recipe(4), cpu, progress=False, max_steps=2)
    assert stopped == {} and torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 2
    capsys.readouterr()
    resumed = train("se", scenes, tmp_path / "b", tmp_path / "b.pt", _recipe(4), cpu, progress=False)
    assert "resuming se from step 2" in capsys.readouterr().out
    assert resumed["accuracy_top1_224px_fp32"] == straight["accuracy_top1_224px_fp32"]
    a, b = load_file(tmp_path / "a" / "se.safetensors"), load_file(tmp_path / "b" / "se.safetensors")
    # Same data order, optimiser state and schedule; CPU kernels may differ in the last bits between runs.
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=2e-3, rtol=1e-2)


def test_every_epoch_visits_each_scene_once():
    seen = [i for step in range(5) for i in batch_indices(20, 4, step, seed=0)]
    assert sorted(seen) == list(range(20))


def _batch(seed: int) -> torch.Tensor:
    """Four 32 px images in [0, 1]: a saturated colour square on a grey ramp each, seeded here."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.linspace(0.2, 0.8, 32).view(1, 1, 1, 32).expand(4, 3, 32, 32).clone()
    x[:, :, 8:24, 8:24] = torch.rand(4, 3, 1, 1, generator=generator)
    return x


def test_augmentation_is_off_in_v1_and_fixed_by_seed_and_step_in_v2():
    x = _batch(0)
    assert torch.equal(augment(x, recipe_named("v1"), step=3), x)
    v2 = recipe_named("v2")
    a, b = augment(x, v2, step=3), augment(x, v2, step=3)
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    assert not torch.allclose(a, augment(x, v2, step=4))  # another step, another draw
    assert not torch.allclose(a, x)


def test_each_augmentation_does_what_it_says():
    x = _batch(1)
    grey = augment(x, Recipe(grayscale=1.0), step=0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    zoomed = augment(x, Recipe(crop_min=0.5), step=0)
    # A zoom-in crop inside the image: the square covers at least as many pixels as before, more
    # for most images; nothing outside the image is padded in (the ramp's range is kept).
    def square_pixels(batch: torch.Tensor) -> list[int]:
        colour = x[:, :, 16:17, 16:17]
        return [int(n) for n in ((batch - colour).abs().amax(1) < 1e-4).sum((1, 2))]

    assert all(z >= 0.9 * o for z, o in zip(square_pixels(zoomed), square_pixels(x), strict=True))
    assert sum(square_pixels(zoomed)) > 1.2 * sum(square_pixels(x))
    assert float(zoomed.min()) >= min(0.2, float(x.min())) - 1e-6
    jittered = augment(x, Recipe(jitter=0.3), step=0)
    assert not torch.allclose(jittered, x) and float((jittered - x).abs().max()) < 0.8


def test_v2_recipe_trains_longer_than_v1_and_only_differs_where_it_says():
    v1, v2 = recipe_named("v1"), recipe_named("v2", batch_size=32)
    assert v1 == Recipe() and not v1.augments and v2.augments and v2.batch_size == 32
    assert sum(n for _, n in v2.phases) > 2.5 * sum(n for _, n in v1.phases)
    assert {k for k in vars(v1) if getattr(v1, k) != getattr(v2, k)} == set(RECIPES["v2"]) | {"batch_size"}
    with pytest.raises(ValueError, match="choose from v1, v2, v3"):
        recipe_named("v9")


def test_schedule_warms_up_then_decays_and_ends_at_full_resolution():
    recipe = Recipe()
    lrs = [recipe.lr_at(s) for s in range(recipe.total_steps)]
    peak = lrs.index(max(lrs))
    assert 0 < peak < 0.1 * recipe.total_steps and lrs[-1] < 0.01 * recipe.lr
    assert recipe.resolution_at(0) < 224 and recipe.resolution_at(recipe.total_steps - 1) == 224
    assert recipe.lr_at(recipe.main_steps - 1) < 0.01 * recipe.lr  # main cycle ends near zero,
    assert recipe.lr_at(recipe.main_steps) == recipe.finetune[2]  # then the fine-tuning cycle restarts


def test_cli_writes_weights_and_a_result_record(scenes, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_WEIGHTS", str(tmp_path / "weights"))
    out = tmp_path / "weights" / "builtin"
    code = main(
        [
            "--variant",
            "resnet50",
            "--data",
            str(scenes),
            "--out",
            str(out),
            "--state",
            str(tmp_path / "s.pt"),
            "--phases",
            "128:16",
            "224:8",
            "--finetune",
            "224:8:0.0001",
            "--batch-size",
            "8",
            "--quiet",
        ]
    )
    assert code == 0
    record = json.loads((out / "resnet50.json").read_text())
    assert record["recipe"]["phases"] == [[128, 16], [224, 8]] and record["recipe"]["finetune"] == [224, 8, 0.0001]
    assert main(["--register", "--out", str(out), "--domain-scenes", "24", "12", "1", "--quiet"]) == 0
    entry = Manifest(tmp_path / "weights").get("builtin").models["resnet50"]
    assert entry.variant == "resnet50"
    assert entry.extra["domain"]["file"] == "builtin/resnet50.domain.safetensors"  # refitted on registering


def test_report_gives_each_splits_accuracy_with_its_wilson_interval(tmp_path, capsys):
    record = tmp_path / "resnet50.json"
    record.write_text(json.dumps({"accuracy_top1_224px_fp32": {"test": 0.75, "unseen_design": 0.5},
                                  "evaluated_on": {"test": 1200, "unseen_design": 100}, "train_minutes": 12.5}))
    assert main(["--report", str(record)]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    # 900 of 1200 and 50 of 100: Wilson 95 % intervals (72.5-77.4) and (40.4-59.6)
    assert row == "| resnet50.json | 75.0 % (72.5-77.4, 1200) | 50.0 % (40.4-59.6, 100) | 12.5 |"


def test_hue_turn_keeps_greys_and_luma_and_a_full_turn_is_none():
    from attnviz.recipe import rotate_hue

    torch.manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(3, 3, 8, 8)  # away from 0 and 1: no clamping
    grey = x[:, :1].expand(-1, 3, -1, -1).clone()
    for angle in (0.0, 2 * math.pi):
        assert torch.allclose(rotate_hue(x, torch.full((3,), angle)), x, atol=1e-5)
    half = rotate_hue(x, torch.full((3,), math.pi / 2))
    assert float((half - x).abs().max()) > 0.05
    luma = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    small = 0.45 + 0.1 * torch.rand(3, 3, 8, 8)  # a turn of these stays inside [0, 1]
    assert torch.allclose((rotate_hue(small, torch.full((3,), 1.0)) * luma).sum(1), (small * luma).sum(1), atol=1e-5)
    assert torch.allclose(rotate_hue(grey, torch.tensor([0.5, 2.0, 4.0])), grey, atol=1e-5)


def test_channel_shuffle_permutes_each_images_channels():
    torch.manual_seed(1)
    x = torch.rand(16, 3, 4, 4)
    y = augment(x, Recipe(channel_shuffle=1.0), step=5)
    moved = 0
    for a, b in zip(x, y, strict=True):
        order = [next(j for j in range(3) if torch.equal(b[i], a[j])) for i in range(3)]
        assert sorted(order) == [0, 1, 2]
        moved += order != [0, 1, 2]
    assert moved >= 8  # 5 of 6 permutations move something
    assert torch.equal(augment(x, Recipe(channel_shuffle=1.0), step=5), y)


def test_mix_style_moves_each_images_statistics_to_the_mix_and_keeps_it_at_weight_one():
    from attnviz.recipe import mix_style

    torch.manual_seed(2)
    f = torch.randn(4, 5, 6, 6) * torch.rand(4, 5, 1, 1) * 3 + torch.randn(4, 5, 1, 1)
    partner = torch.tensor([1, 2, 3, 0])
    assert torch.allclose(mix_style(f, torch.ones(4), partner), f, atol=1e-4)
    swapped = mix_style(f, torch.zeros(4), partner)
    assert torch.allclose(swapped.mean(dim=(2, 3)), f[partner].mean(dim=(2, 3)), atol=1e-4)
    assert torch.allclose(swapped.std(dim=(2, 3)), f[partner].std(dim=(2, 3)), atol=1e-3)


def test_mix_style_hooks_change_the_training_forward_only_and_are_removed():
    from attnviz.models import ModelSpec, build_model
    from attnviz.train import MIX_STYLE_SITES, _mix_style_hooks

    torch.manual_seed(3)
    model = build_model(ModelSpec("se", num_classes=4, layers=(1, 1, 1, 1))).eval()
    x = torch.rand(4, 3, 32, 32)
    plain = model(x)
    assert _mix_style_hooks(model, Recipe(), step=0, batch=4) == []
    hooks = _mix_style_hooks(model, Recipe(mixstyle=1.0), step=0, batch=4)
    assert len(hooks) == len(MIX_STYLE_SITES)
    mixed = model(x)
    for hook in hooks:
        hook.remove()
    assert not torch.allclose(mixed, plain, atol=1e-4)
    assert all(not getattr(model, site)._forward_hooks for site in MIX_STYLE_SITES)
    assert torch.equal(model(x), plain)
    again = _mix_style_hooks(model, Recipe(mixstyle=1.0), step=0, batch=4)  # fixed by seed and step
    assert torch.equal(model(x), mixed)
    for hook in again:
        hook.remove()


def test_compiled_training_runs_record_it_and_start_from_the_eager_loss(scenes, tmp_path):
    """``--compile`` through the whole command: the record says so, and the first step (same model, same batch)
    has the eager run's loss. Later losses are not compared: AdamW's first update is about lr * sign(gradient), so
    a gradient entry near 0 that rounds to the other sign in a fused kernel moves its weight the other way, and
    the runs drift apart by chance (up to 3% by step 3 on AVX2 cores). The next test compares the steps."""
    cpu = torch.device("cpu")
    eager = train("se", scenes, tmp_path / "a", tmp_path / "a.pt", _recipe(2), cpu, progress=False, log_every=1)
    compiled = train("se", scenes, tmp_path / "b", tmp_path / "b.pt", _recipe(2), cpu, progress=False, log_every=1,
                     compile=True)
    assert compiled["machine"]["compiled"] is True and eager["machine"]["compiled"] is False
    assert len(compiled["history"]) == len(eager["history"]) == 2
    assert compiled["history"][0]["step_loss"] == pytest.approx(eager["history"][0]["step_loss"], abs=1e-3)


def test_a_compiled_step_moves_the_weights_as_the_eager_step_does(scenes):
    """The training step itself (attnviz.train._step) on a compiled and an eager copy of one model, with plain SGD
    so that each weight moves by lr * gradient: the same losses and the same moves, step after step."""
    from attnviz.models import ModelSpec, build_model
    from attnviz.scenes import SceneSplit
    from attnviz.train import _step

    split = SceneSplit(scenes / "train")
    recipe = Recipe(batch_size=8, phases=[(64, 24)], finetune=None, bf16=False, lr=0.05, warmup_fraction=0.0)
    torch.manual_seed(5)
    eager = build_model(ModelSpec("se", num_classes=len(split.classes), layers=(1, 1, 1, 1))).train()
    copy = build_model(ModelSpec("se", num_classes=len(split.classes), layers=(1, 1, 1, 1))).train()
    copy.load_state_dict(eager.state_dict())
    compiled = torch.compile(copy, dynamic=False)
    sgd = [torch.optim.SGD(m.parameters(), lr=recipe.lr) for m in (eager, copy)]
    for step in range(3):
        before = {name: p.detach().clone() for name, p in eager.named_parameters()}
        loss_e = _step(eager, sgd[0], split, recipe, step, torch.device("cpu"))[0]
        loss_c = _step(compiled, sgd[1], split, recipe, step, torch.device("cpu"))[0]
        assert loss_c == pytest.approx(loss_e, rel=1e-3, abs=1e-4), step
        moves = [(p_e.detach() - before[name], p_c.detach() - before[name])
                 for (name, p_e), p_c in zip(eager.named_parameters(), copy.parameters(), strict=True)]
        total = math.sqrt(sum(float(e.norm()) ** 2 for e, _ in moves))
        apart = math.sqrt(sum(float((c - e).norm()) ** 2 for e, c in moves))
        assert apart <= 1e-2 * total, (step, apart / total)  # measured: up to 2.2e-3 on AVX2 cores
        assert all(float((c - e).norm()) <= 0.05 * float(e.norm()) + 1e-7 for e, c in moves), step
        assert sum(float(e.norm()) > 0 for e, _ in moves) > 0.9 * len(moves)  # not a comparison of zeros
        copy.load_state_dict(eager.state_dict())  # the next step starts both from the same weights again


def test_compile_refuses_mix_style_recipes_in_one_line(scenes, tmp_path):
    recipe = _recipe(2)
    recipe.mixstyle = 0.5
    with pytest.raises(ValueError, match="compile does not support MixStyle"):
        train("se", scenes, tmp_path / "a", tmp_path / "a.pt", recipe, torch.device("cpu"), progress=False,
              compile=True)


def test_a_cpu_without_native_bf16_trains_in_float32_and_says_so(monkeypatch):
    """Emulated bf16 is about 13x slower than float32 on AVX2 cores: such a CPU trains in float32 unless told."""
    from attnviz import recipe as recipe_module

    for native, device, force, expected in ((False, "cpu", False, False), (True, "cpu", False, True),
                                            (False, "cpu", True, True), (False, "cuda", False, True)):
        monkeypatch.setattr(recipe_module, "native_bf16", lambda native=native: native)
        recipe = recipe_named("v2")
        note = recipe_module.cpu_precision(recipe, device, force)
        assert recipe.bf16 is expected and (note is None) == expected
        if note:
            assert note.startswith("this CPU has no native bfloat16 (AVX512-BF16 or AMX)") and "--force-bf16" in note
    fp32 = recipe_named("v2", bf16=False)
    assert recipe_module.cpu_precision(fp32, "cpu") is None and fp32.bf16 is False


def test_native_bf16_is_what_torch_reports():
    from attnviz.recipe import native_bf16

    assert native_bf16() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
