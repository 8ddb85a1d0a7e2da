"""How long `python -m attnviz.weights import SOURCE` takes to say it cannot download, against importing torch.

    python bench/bench_offline_import.py [--runs 7] [--json bench/results/offline_import.json]

Every library's downloads go to a loopback port that refuses connections (the HTTP(S) proxies and the
Hugging Face endpoint), as on a machine without internet. Each run starts a fresh process; per source the
command's wall time is compared with a baseline measured in the same round, a process that only runs
``import torch, torchvision.models`` (what any attnviz command pays first). Sources and baseline take turns
round-robin, the order shifting by one each round, so load that comes and goes falls on all of them alike.
The figure of merit is the median of the per-round differences (command minus baseline): what attnviz adds
on top of torch's start-up before it answers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explain import RESULTS, machine_info  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["torchvision-resnet50", "timm-seresnet50", "pytorchcv-cbam-resnet50", "cbam-official"]
BASELINE = "import torch, torchvision.models"


def offline_env(port: int, home: Path) -> dict[str, str]:
    """Downloads sent to a closed loopback port; library caches in a fresh folder, so nothing cached answers."""
    closed = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "hf_hub_offline", "hf_home")}
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = closed
    env.update(HF_ENDPOINT=closed, HF_HOME=str(home / "hf"), TORCH_HOME=str(home / "torch"),
               GRADIO_ANALYTICS_ENABLED="False")
    return env


def timed(args: list[str], env: dict[str, str], expect_rc: int) -> float:
    start = time.monotonic()
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    if done.returncode != expect_rc:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {(done.stdout + done.stderr).strip()}")
    return seconds


def measure(runs: int, warmup: int) -> dict:
    with socket.socket() as sock, tempfile.TemporaryDirectory() as tmp:
        sock.bind(("127.0.0.1", 0))
        env = offline_env(sock.getsockname()[1], Path(tmp))
        jobs = {"baseline": (["-c", BASELINE], 0)}
        for source in SOURCES:
            jobs[source] = (["-m", "attnviz.weights", "import", source, "--set", "bench",
                             "--weights-dir", str(Path(tmp) / "weights")], 2)
        names = list(jobs)
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(warmup + runs):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                args, expect_rc = jobs[name]
                seconds = timed(args, env, expect_rc)
                if round_ >= warmup:
                    times[name].append(seconds)
    baseline = times["baseline"]
    result = {"baseline_s": {"median": statistics.median(baseline), "min": min(baseline), "max": max(baseline)}}
    result["sources"] = {}
    for source in SOURCES:
        over = [t - b for t, b in zip(times[source], baseline, strict=True)]
        result["sources"][source] = {"median_s": statistics.median(times[source]), "min_s": min(times[source]),
                                     "max_s": max(times[source]), "median_over_baseline_s": statistics.median(over)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path, default=RESULTS / "offline_import.json")
    args = parser.parse_args(argv)
    machine = machine_info()
    result = measure(args.runs, args.warmup)
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    data = {"machine": machine, "config": {"runs": args.runs, "warmup": args.warmup, "baseline": BASELINE},
            **result}
    b = result["baseline_s"]
    print(f"baseline `{BASELINE}`: median {b['median']:.2f} s (min {b['min']:.2f}, max {b['max']:.2f})")
    for source, e in result["sources"].items():
        print(f"{source:26s} median {e['median_s']:.2f} s, {e['median_over_baseline_s']:+.2f} s over the baseline")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
