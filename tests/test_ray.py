"""``attnviz explain --engine ray`` on a real two-node Ray cluster on loopback (tests/raycluster.py).

The cluster is a head and a worker node, each a ``ray start`` process group with 1 CPU, so the two workers of a job
run on different nodes. Each node declares one GPU (a logical resource: this machine has none), so each worker takes
one, as on a cluster with GPUs, finds no CUDA device and says so. The runs go through the installed ``attnviz``
command, as a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raycluster import Cluster, auth_env, beyond_loopback, listening_sockets

from attnviz.models import VARIANTS

ATTNVIZ = Path(sys.executable).parent / "attnviz"
RUN_TIMEOUT_S = 1800
pytest.importorskip("ray", reason="the Ray tests need Ray: pip install -e '.[ray]' (requirements-dev.txt has it)")


def _env(auth: dict | None = None) -> dict:
    """The command's environment; ``auth`` the cluster's token (Cluster.env, or auth_env for a local instance)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
            "RAY_USAGE_STATS_ENABLED": "0", **(auth or {})}


def _images(folder: Path, count: int, broken: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.random.default_rng(100 + i).integers(0, 256, (72, 64 + 4 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i:02d}.png")
    if broken:
        (folder / "broken.png").write_bytes(b"this is text, not a PNG")
    return folder


def explain(*args: str, auth: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(ATTNVIZ), "explain", *args], capture_output=True, text=True, env=_env(auth),
                          timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), workers=1, gpus=1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _images(tmp_path_factory.mktemp("ray") / "photos", 6)


@pytest.fixture(scope="module")
def two_runs(cluster, photos, tiny_weights_dir, tmp_path_factory):
    """The same folder explained locally and on the cluster's two workers, two images per pass."""
    out = tmp_path_factory.mktemp("ray-out")
    common = ("--weights-dir", str(tiny_weights_dir), "--batch-size", "2")
    local = explain(str(photos), "--out", str(out / "local"), *common)
    on_ray = explain(str(photos), "--out", str(out / "ray"), *common, "--engine", "ray", "--address", cluster.address,
                     auth=cluster.env)
    return local, on_ray, out / "local", out / "ray"


def _lines(result: subprocess.CompletedProcess, root: Path) -> list[str]:
    """stdout's lines, sorted, with the output folder and the report's size per image (PNG bytes of maps that
    may differ by a level or two: compared apart, within 3 %) left out."""
    lines = (line.replace(str(root), "OUT") for line in result.stdout.splitlines())
    return sorted(re.sub(r"\d+ KB per image", "N KB per image", line) for line in lines)


def _kb_per_image(result: subprocess.CompletedProcess) -> int:
    return int(re.search(r"(\d+) KB per image", result.stdout).group(1))



@pytest.mark.slow
def test_a_ray_run_writes_what_the_local_run_writes(two_runs):
    local, on_ray, local_out, ray_out = two_runs
    assert local.returncode == on_ray.returncode == 1, on_ray.stderr[-3000:]  # the broken file fails in both
    assert _lines(local, local_out) == _lines(on_ray, ray_out)  # one line per image, in the order they finished
    assert abs(_kb_per_image(local) - _kb_per_image(on_ray)) <= 0.03 * _kb_per_image(local)
    assert "failed   photos/broken.png: " in on_ray.stdout and "not an image file" in on_ray.stdout
    assert "Ray: 2 workers on 2 nodes explained these images" in on_ray.stderr
    assert on_ray.stderr.count("ready; Ray gave it GPU ") == 2  # each took a GPU, found no CUDA: on the CPU
    for i in range(6):
        folder = f"photos__p{i:02d}.png"
        a, b = (json.loads((out / folder / "summary.json").read_text()) for out in (local_out, ray_out))
        assert a["files"] == b["files"] and a["run"]["key"] == b["run"]["key"]
        for variant in VARIANTS:
            ma, mb = a["models"][variant], b["models"][variant]
            assert [t["index"] for t in ma["top"]] == [t["index"] for t in mb["top"]]
            assert [t["probability"] for t in ma["top"]] == pytest.approx([t["probability"] for t in mb["top"]],
                                                                          abs=1e-5)
            overlays = [np.asarray(Image.open(out / folder / f"{variant}_overlay.png"), np.int16)
                        for out in (local_out, ray_out)]
            assert np.abs(overlays[0] - overlays[1]).max() <= 2  # the same heatmap, up to rounding in the colours
    pages = [sorted(p.name for p in out.glob("report*.html")) for out in (local_out, ray_out)]
    assert pages[0] == pages[1] == ["report-1.html", "report.html"]
    index = (ray_out / "report.html").read_text(encoding="utf-8")
    assert all(f"p{i:02d}.png" in index for i in range(6)) and "broken.png" in index


@pytest.mark.slow
def test_a_second_ray_run_skips_what_the_first_finished(two_runs, photos, cluster, tiny_weights_dir):
    _, _, _, ray_out = two_runs
    again = explain(str(photos), "--out", str(ray_out), "--weights-dir", str(tiny_weights_dir), "--batch-size", "2",
                    "--engine", "ray", "--address", cluster.address, auth=cluster.env)
    assert again.returncode == 1
    assert again.stdout.count("skipped  ") == 6 and again.stdout.count("failed   ") == 1


@pytest.mark.slow
def test_more_workers_than_the_clusters_gpus_is_one_line(two_runs, photos, cluster, tiny_weights_dir, tmp_path):
    """Three workers with a GPU each on a cluster of two GPUs would wait forever: refused before any image; with
    --worker-gpus 0 the workers take no GPU."""
    common = ("--weights-dir", str(tiny_weights_dir), "--engine", "ray", "--address", cluster.address)
    refused = explain(str(photos), "--out", str(tmp_path / "a"), *common, "--workers", "3", auth=cluster.env)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: 3 workers with a GPU each need 3 GPUs and the cluster has 2; ask for at most 2 workers, or "
        "--worker-gpus 0 for workers on CPUs only")
    on_cpus = explain(str(photos / "p00.png"), "--out", str(tmp_path / "b"), *common, "--workers", "3",
                      "--worker-gpus", "0", auth=cluster.env)
    assert on_cpus.returncode == 0, on_cpus.stderr[-3000:]
    assert on_cpus.stdout.startswith("done ") and "CUDA" not in on_cpus.stderr


@pytest.mark.slow
def test_the_cluster_listens_on_loopback_only(two_runs, cluster):
    sockets = listening_sockets(cluster.pids())
    assert sockets, "no listening socket found for the cluster's processes: the check would see nothing"
    assert beyond_loopback(cluster.pids()) == []


def test_the_socket_check_sees_a_socket_beyond_loopback():
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        assert [s[1:3] for s in beyond_loopback({os.getpid()})] == [("0.0.0.0", sock.getsockname()[1])]


@pytest.mark.slow
def test_without_an_address_a_local_instance_on_loopback_is_started_and_stopped(tiny_weights_dir, tmp_path):
    """A local Ray instance: its processes listen on loopback only while the job runs, and are gone after."""
    photos = _images(tmp_path / "photos", 4, broken=False)
    before = _ray_processes()
    process = subprocess.Popen([str(ATTNVIZ), "explain", str(photos), "--out", str(tmp_path / "out"), "--weights-dir",
                                str(tiny_weights_dir), "--batch-size", "1", "--engine", "ray", "--workers", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env(auth_env(tmp_path)))
    first = process.stdout.readline()  # the first image done: the instance and its worker are up
    started = _ray_processes() - before
    seen = listening_sockets(started)
    outside = beyond_loopback(started)
    out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, err[-3000:]
    assert first.startswith("done ") and (first + out).count("done ") == 4
    assert seen and outside == []
    assert "Ray: 1 worker on 1 node" in err
    deadline = time.monotonic() + 60
    while _ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)  # ray.shutdown() has signalled them; they exit on their own
    assert not (_ray_processes() - before), "the local Ray instance was left running"


def _ray_processes() -> set[int]:
    """Ray's own server processes on this machine (GCS, raylets, workers, agents)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "ray/core/src/ray" in command or command.startswith("ray::") or "ray/_private/workers" in command \
                    or "ray/dashboard" in command or "ray/_private/log_monitor" in command:
                found.add(int(entry.name))
    return found


@pytest.mark.slow
def test_a_lost_node_has_its_images_explained_elsewhere(tiny_weights_dir, tmp_path):
    """SIGKILL to the worker node mid-job: its batch goes to the head's worker and every image is done once."""
    cluster = Cluster(tmp_path / "cluster", workers=1)
    try:
        photos = _images(tmp_path / "photos", 12, broken=False)
        process = subprocess.Popen([str(ATTNVIZ), "explain", str(photos), "--out", str(tmp_path / "out"),
                                    "--weights-dir", str(tiny_weights_dir), "--batch-size", "1", "--engine", "ray",
                                    "--address", cluster.address],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=_env(cluster.env))
        ready = []
        while len(ready) < 2:  # both workers up: the one on the worker node has a batch the moment it is ready
            line = process.stderr.readline()
            assert line, "the command ended before two workers were ready"
            ready += [line] if " ready" in line else []
        cluster.nodes[1].kill()
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        cluster.stop()
    assert process.returncode == 0, err[-3000:]
    lines = out.splitlines()
    assert lines[-1].startswith("12 images: 12 explained, 0 skipped, 0 failed; report: "), out
    lines = lines[:-1]
    assert len(lines) == 12 and all(line.startswith("done ") for line in lines), out
    assert sorted(line.split()[1] for line in lines) == [f"photos/p{i:02d}.png" for i in range(12)]
    assert "lost; another worker takes its 1 image\n" in err
    for i in range(12):
        summary = json.loads((tmp_path / "out" / f"photos__p{i:02d}.png" / "summary.json").read_text())
        assert all((tmp_path / "out" / f"photos__p{i:02d}.png" / name).is_file() for name in summary["files"])
    assert not list((tmp_path / "out").glob(".incoming-*")), "a half-written folder was left behind"


@pytest.mark.slow
def test_engine_ray_without_ray_says_how_to_install_it(tiny_weights_dir, tmp_path):
    """Ray missing (its import blocked): one line naming the extra to install, exit 2, nothing explained."""
    photos = _images(tmp_path / "photos", 1, broken=False)
    code = ("import sys; sys.modules['ray'] = None; from attnviz.cli import main; "
            f"sys.exit(main(['explain', {str(photos)!r}, '--out', {str(tmp_path / 'out')!r}, '--weights-dir', "
            f"{str(tiny_weights_dir)!r}, '--engine', 'ray']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                            timeout=RUN_TIMEOUT_S)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --engine ray needs Ray, which is not installed: pip install 'attnviz[ray]' (in a checkout: "
        ".venv/bin/pip install -e '.[ray]')"]
    assert not (tmp_path / "out" / "photos__p00.png").exists()


def test_ray_options_without_engine_ray_are_one_line_errors(capsys, tmp_path):
    from attnviz.cli import main

    for extra in (["--address", "127.0.0.1:6379"], ["--workers", "2"], ["--worker-cpus", "2"], ["--worker-gpus", "1"]):
        code = main(["explain", str(tmp_path), "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and f"{extra[0]} needs --engine ray" in err and len(err.strip().splitlines()) == 1



class _StandIn:
    """What cluster_plan and worker_device read of Ray: the cluster's resources, this worker's GPU ids."""

    def __init__(self, cpus: int, gpus: int = 0, gpu_ids: tuple = ()) -> None:
        self.resources, self.gpu_ids = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}, list(gpu_ids)

    def cluster_resources(self) -> dict:
        return self.resources

    def get_gpu_ids(self) -> list:
        return self.gpu_ids


def test_workers_take_a_gpu_each_when_the_cluster_has_gpus():
    from attnviz.batch import UsageError
    from attnviz.distributed import cluster_plan

    assert cluster_plan(_StandIn(8), None, 1) == (8, 0)
    assert cluster_plan(_StandIn(8), None, 1, None) == (8, 0)  # auto: no GPU in the cluster, none asked for
    assert cluster_plan(_StandIn(8, 2), None, 1, None) == (2, 1)  # auto: one worker per GPU
    assert cluster_plan(_StandIn(8, 2), None, 4, None) == (2, 1)
    assert cluster_plan(_StandIn(8, 4), None, 4, None) == (2, 1)  # the CPUs hold two
    assert cluster_plan(_StandIn(8, 2), 2, 1, None) == (2, 1)
    assert cluster_plan(_StandIn(8, 2), None, 1, 0) == (8, 0)  # --worker-gpus 0: CPUs only
    assert cluster_plan(_StandIn(8, 2), 5, 1, 0) == (5, 0)
    with pytest.raises(UsageError, match="3 workers with a GPU each need 3 GPUs and the cluster has 2"):
        cluster_plan(_StandIn(8, 2), 3, 1, 1)
    for asked in (None, 1):
        with pytest.raises(UsageError, match="--worker-gpus 1, but the cluster has no GPUs; leave the option out"):
            cluster_plan(_StandIn(8), asked, 1, 1)
    with pytest.raises(UsageError, match="--worker-cpus 9 is more than the cluster's 8 CPUs"):
        cluster_plan(_StandIn(8, 2), None, 9, None)


def test_a_worker_given_a_gpu_without_cuda_runs_on_the_cpu_and_says_so():
    import torch

    from attnviz.distributed import worker_device

    assert worker_device(_StandIn(1)) == ("cpu", None)
    if torch.cuda.is_available():
        assert worker_device(_StandIn(1, 1, ("0",))) == ("cuda", None)
    else:
        assert worker_device(_StandIn(1, 1, ("0",))) == ("cpu", "Ray gave it GPU 0, but its torch finds no CUDA "
                                                         "device (a CPU-only build, or no driver); its models run "
                                                         "on the CPU")
