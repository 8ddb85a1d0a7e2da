"""Start-up: how long after ``python app.py`` the page is served, against importing torch + torchvision + gradio
in the same run, and what the first request costs against later ones.

    python bench/bench_startup.py [--rounds 3] [--later 5] [--set NAME] [--weights-dir DIR] [--repo DIR]
                                  [--json bench/results/startup.json]

Each round, in this order:

* ``imports``  - a fresh ``python -c "import torch, torchvision, gradio"``: its wall time (the floor);
* ``served``   - a fresh ``python app.py --port P``: the wall time from starting it until ``/`` first answers 200;
* ``first``    - sent through gradio_client as soon as ``/`` answers: the ``/explain`` call with the UI's defaults
  (connecting the client is not timed), then ``later`` more calls of the same kind on a different image each.

Reported: medians over rounds of served - imports (target: <= 2 s) and of first / median(later) (target:
<= 1.5x). Only 127.0.0.1 is used; the app is stopped after each round. Not to be run while training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explain import REPO, RESULTS, example_images, machine_info  # noqa: E402
from load_test import free_port, stop, wait_until_up  # noqa: E402

IMPORTS = "import torch, torchvision, gradio"


def time_imports(env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def one_round(args, env: dict, images: list[Path]) -> dict:
    from gradio_client import Client, handle_file

    imports = time_imports(env)
    port = free_port()
    command = [sys.executable, str(args.repo / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--set", args.set_name] if args.set_name else []
    command += ["--weights-dir", str(args.weights_dir)] if args.weights_dir else []
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        server = subprocess.Popen(command, cwd=args.repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            problem = wait_until_up(url, server, time.monotonic() + args.timeout, interval=0.05)
            served = time.perf_counter() - started
            if problem:
                log.seek(0)
                raise SystemExit(f"{problem}\n{log.read().decode(errors='replace')[-3000:]}")
            client = Client(url, verbose=False, download_files=False)
            times = []
            for image in images[: 1 + args.later]:
                began = time.perf_counter()
                client.predict(handle_file(str(image)), api_name="/explain")
                times.append(time.perf_counter() - began)
        finally:
            stop(server)
    return {"imports_s": imports, "served_s": served, "served_over_imports_s": served - imports,
            "first_request_s": times[0], "later_requests_s": times[1:],
            "first_over_later": times[0] / statistics.median(times[1:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--later", type=int, default=5, help="requests after the first (default 5)")
    parser.add_argument("--set", dest="set_name", help="model set (default: the manifest's default)")
    parser.add_argument("--weights-dir", type=Path, help="weights folder (default: weights/)")
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the checkout whose app.py to start (default: this one; e.g. a worktree of an earlier "
                             "commit for a before/after)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the page (default 300)")
    parser.add_argument("--json", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args(argv)
    if args.later < 1:
        parser.error("--later must be at least 1")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    images = example_images()
    images = [images[i % len(images)] for i in range(1 + args.later)]
    machine = machine_info()
    rounds = []
    for number in range(args.rounds):
        rounds.append(one_round(args, env, images))
        print(f"round {number + 1}: " + json.dumps({k: v for k, v in rounds[-1].items() if k != "later_requests_s"}),
              flush=True)
    summary = {key: statistics.median(r[key] for r in rounds)
               for key in ("imports_s", "served_s", "served_over_imports_s", "first_request_s", "first_over_later")}
    summary["later_request_s"] = statistics.median(t for r in rounds for t in r["later_requests_s"])
    summary["targets"] = {
        "served within 2 s of the imports": {"value": round(summary["served_over_imports_s"], 2), "limit": "<= 2.0",
                                             "met": summary["served_over_imports_s"] <= 2.0},
        "first request <= 1.5x a later one": {"value": round(summary["first_over_later"], 2), "limit": "<= 1.5",
                                              "met": summary["first_over_later"] <= 1.5}}
    result = {"command": "python bench/bench_startup.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "repo": str(args.repo), "rounds": rounds, "summary": summary, "machine": machine}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
