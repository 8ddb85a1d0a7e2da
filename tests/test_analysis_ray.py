"""``python -m attnviz.analyze --engine ray``: the analysis' units on a real two-node Ray cluster on loopback
(tests/raycluster.py), and the unit machinery itself without Ray.

The measuring phases are cut into units whose values are added in order (attnviz/analysis/engine.py): the
numbers cannot depend on which engine ran the units or in which order they finished, and a Ray run must write
the local run's analysis.json, and go on where a killed run stopped.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_model_set

from attnviz.analysis import cli as analysis_cli
from attnviz.analysis.config import JSON_NAME
from attnviz.analysis.engine import LocalEngine, plan_units
from attnviz.analysis.items import SceneSource
from attnviz.analysis.on_ray import WORK_DIR
from attnviz.analysis.run import run_analysis, run_unit
from attnviz.scenes import CLASSES
from attnviz.weights import load_model_set

RUN_TIMEOUT_S = 1800
# a small analysis with every measuring phase and several units in each (batches of 2 CAMs)
SMALL = ["--val", "4", "--test", "6", "--unseen", "2", "--pairs", "2", "--faithfulness", "2", "--scorecam", "1",
         "--methods", "gradcam", "randomcam", "--layers", "layer3", "layer4", "--steps", "2", "--road-percentiles",
         "50", "--resamples", "50", "--knockout-scenes", "2", "--sanity-scenes", "1", "--batch-size", "2",
         "--workers", "0", "--quiet"]
VOLATILE = {"timing", "machine", "command", "config"}  # how the run was made, not what it measured (top level)


@pytest.fixture(scope="module")
def scenes_weights_dir(tmp_path_factory) -> Path:
    """Two random ResNet50s that know the scene classes, at 64 px: without attention and with CBAM's (channel
    and spatial gates, switched off in the knock-out section)."""
    return make_model_set(tmp_path_factory.mktemp("scene-weights"), "scenes", classes=CLASSES, crop=64,
                          variants=("resnet50", "cbam"))


def _numbers(node, path=""):
    """Every number of a result with its path, leaving out how the run was made."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not (path == "" and key in VOLATILE) and key != "seconds":  # and a section's time
                yield from _numbers(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{path}/{i}")
    elif isinstance(node, bool | int | float) and node is not None:
        yield path, float(node)
    else:
        yield path, node


def assert_same_numbers(a: dict, b: dict, tolerance: float = 5e-4) -> None:
    """Every number alike within ``tolerance`` (relative above 1). Not exactly: a Ray worker runs torch on another
    number of threads, whose sums round differently, and the result keeps 4 to 6 decimals (a channel weight of
    0.35335 can be written 0.3533 in one run and 0.3534 in the other); a unit lost, doubled or out of order moves
    the numbers far more."""
    left, right = dict(_numbers(a)), dict(_numbers(b))
    assert left.keys() == right.keys()
    for path, value in left.items():
        other = right[path]
        if isinstance(value, float) and isinstance(other, float):
            assert abs(value - other) <= tolerance * max(1.0, abs(value)), (path, value, other)
        else:
            assert value == other, path


class _ShuffledEngine:
    """Runs the units last first, each one's values through pickle (as a Ray worker's go through the work folder),
    and adds them in the units' order: what a cluster whose workers finish in any order does."""

    def __init__(self) -> None:
        self.units = []

    def run(self, ctx, units, desc):
        parts = {}
        for unit in reversed(units):
            part = ctx.fresh(faith_inputs=unit.phase == "faithfulness")
            run_unit(part, unit)
            parts[unit] = pickle.loads(pickle.dumps(part.partial()))
        for unit in units:
            ctx.absorb(parts[unit])
        self.units += units


def test_units_finished_in_any_order_give_the_numbers_of_one_pass(scenes_weights_dir):
    model_set = load_model_set("scenes", scenes_weights_dir)
    # one model (CBAM: channel and spatial gates, knock-out): the units' order is what is tested, and two runs
    # of every phase, Score-CAM's 2048 masked passes among them, take minutes a model
    config = analysis_cli.config_from_args(analysis_cli._parser().parse_args(SMALL + ["--knockout-scenes", "4",
                                                                                      "--sanity-scenes", "2",
                                                                                      "--models", "cbam"]))
    here = run_analysis(model_set, config, progress=False, engine=LocalEngine())
    shuffled = _ShuffledEngine()
    spread = run_analysis(model_set, config, progress=False, engine=shuffled)
    assert_same_numbers(here, spread, tolerance=0)
    phases = {u.phase for u in shuffled.units}
    assert phases == {"val", "localise", "scorecam", "faithfulness", "knockout", "sanity"}
    assert [(u.start, u.stop) for u in shuffled.units if u.phase == "knockout"] == [(0, 2), (2, 4)]
    assert [(u.start, u.stop) for u in shuffled.units if u.phase == "sanity"] == [(0, 1), (1, 2)]  # a batch of 2 / 4
    assert set(here["sanity"]["models"]) == {"cbam"} and here["variants"] == ["cbam"]
    assert len(here["sanity"]["models"]["cbam"]["targets"]) == 2
    assert set(here["knockout"]["models"]) == {"cbam"}  # the gated models
    trained = here["knockout"]["models"]["cbam"]["accuracy"]["trained"]["mean"]
    assert here["knockout"]["scenes"] == 4 and abs(4 * trained - round(4 * trained)) < 1e-6  # a share of 4 scenes
    assert len([u for u in shuffled.units if u.phase == "localise" and u.split == "test"]) == 3  # 6 scenes, 2 each
    assert here["localisation"]["test"]["pointing"]["gradcam@layer4"]["n"] == 6


def test_units_cover_each_split_once_in_batches_of_cams():
    scenes = SceneSource(CLASSES, None)
    units = plan_units(scenes, "localise", "test", 7, 3)
    assert [(u.start, u.stop, u.position) for u in units] == [(0, 3, 0), (3, 6, 3), (6, 7, 6)]
    pairs = plan_units(scenes, "localise", "pairs", 5, 4)  # two CAMs a scene: two scenes a batch
    assert [(u.start, u.stop, u.position) for u in pairs] == [(0, 2, 0), (2, 4, 4), (4, 5, 8)]


def test_engine_options_go_together(scenes_weights_dir, capsys):
    base = ["--set", "scenes", "--weights-dir", str(scenes_weights_dir), "--quick", "--quiet"]
    assert analysis_cli.main(base + ["--address", "127.0.0.1:6379"]) == 2
    assert "--address needs --engine ray" in capsys.readouterr().err
    assert analysis_cli.main(base + ["--engine", "ray", "--sections", "knockout"]) == 2
    assert "--sections runs here, not on Ray" in capsys.readouterr().err
    assert analysis_cli.main(base + ["--engine", "ray", "--worker-cpus", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- on a real cluster

ray_cluster = pytest.importorskip("raycluster")


def _analyze(*args: str, auth: dict) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", **auth}
    return subprocess.Popen([sys.executable, "-m", "attnviz.analyze", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("ray", reason="the Ray tests need Ray: pip install -e '.[ray]' (requirements-dev.txt has it)")
    cluster = ray_cluster.Cluster(tmp_path_factory.mktemp("cluster"), workers=1)
    yield cluster
    cluster.stop()


@pytest.mark.slow
def test_an_analysis_on_ray_writes_the_local_numbers_and_goes_on_after_a_kill(cluster, scenes_weights_dir, tmp_path):
    """The driver killed mid-run, then the worker node killed in the resumed run: the numbers of the local run."""
    # without Score-CAM (2048 masked passes a model at layer4, two thirds of a local run and more on a one-thread
    # worker): the workers run every phase through the same run_unit, and the shuffled-order test measures it
    common = ["--set", "scenes", "--weights-dir", str(scenes_weights_dir), *SMALL, "--scorecam", "0"]
    assert analysis_cli.main([*common, "--out", str(tmp_path / "local")]) == 0
    local = json.loads((tmp_path / "local" / JSON_NAME).read_text())

    out = tmp_path / "ray"
    ray_args = [*common, "--out", str(out), "--engine", "ray", "--address", cluster.address]
    first = _analyze(*ray_args, auth=cluster.env)
    work = out / WORK_DIR
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(list(work.glob("localise-test-*.pkl"))) < 2:  # killed once part of the test scenes are measured
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and nothing else: as a lost laptop would
    first.wait()
    kept = {p.name for p in work.glob("*.pkl")}
    assert {"val-val-000000-000002.pkl", "val-val-000002-000004.pkl"} <= kept

    second = _analyze(*ray_args, auth=cluster.env)
    seen = []
    while sum(" ready" in line for line in seen) < 2:  # both workers up: the worker node's has a unit at once
        seen.append(second.stderr.readline())
        assert seen[-1], "the command ended before two workers were ready"
    cluster.nodes[1].kill()  # the worker node lost mid-run: its unit goes to the head's worker
    stdout, stderr = second.communicate(timeout=RUN_TIMEOUT_S)
    stderr = "".join(seen) + stderr
    assert second.returncode == 0, stderr[-3000:]
    assert "val: IoU threshold: 2 of 2 units already measured" in stderr
    assert "units already measured" in stderr.split("val: IoU threshold")[1]  # the test scenes' too
    assert re.search(r"Ray worker \S+ lost; another worker takes unit \w+-", stderr), stderr[-3000:]
    assert re.search(r"Ray: [23] workers on 2 nodes measured this analysis", stderr), stderr[-3000:]
    assert stdout.startswith("wrote ") and len(stdout.splitlines()) == 1
    assert not work.exists()  # the units' values are gone once the report is written
    assert_same_numbers(local, json.loads((out / JSON_NAME).read_text()))
    assert np.isfinite(local["faithfulness"]["deletion"]["gradcam@layer4"]["models"]["cbam"]["mean"])
    assert local["sanity"]["models"]["cbam"]["verdict"] and local["knockout"]["models"]["cbam"]


def test_a_folder_of_the_users_images_reaches_a_worker_whole(tmp_path):
    """The driver sends the data source to each Ray worker pickled: a folder source must give the same items."""
    from test_analysis_dataset import write_folder

    from attnviz.analysis.config import AnalysisConfig
    from attnviz.analysis.dataset import FolderSource, find_pairs
    from attnviz.weights import Preprocessing

    images, masks, labels = write_folder(tmp_path)
    view = Preprocessing(resize=64, crop=64)
    source = FolderSource(images, masks, labels, find_pairs(images, masks, view, CLASSES, labels), view,
                          AnalysisConfig(threshold=0.5))
    copy = pickle.loads(pickle.dumps(source))
    assert len(copy.splits["test"]) == len(source.splits["test"]) == 3
    for index in range(3):
        (a,), (b,) = source.items("test", index), copy.items("test", index)
        assert a.target == b.target and (a.own == b.own).all() and np.array_equal(a.tensor.numpy(), b.tensor.numpy())
