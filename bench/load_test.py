"""Load test: the real app on a loopback port, N clients x M requests through gradio_client's /explain endpoint.

    python bench/load_test.py [--clients 8] [--requests 25] [--timeout 900] [--set NAME] [--weights-dir DIR]
                              [--image PATH] [--json bench/results/load.json]

Starts ``python app.py --host 127.0.0.1 --port P [--set NAME] [--weights-dir DIR]`` on a free port, waits for it
to answer, sends one warm-up request, then runs every client in its own thread with its own
``gradio_client.Client``, each sending its requests one after another (default Grad-CAM, layer4, the UI's
defaults for everything else). Bounded in count (clients x requests) and in time (``--timeout``: no request
starts after it, and one still running then counts as an error). Reports throughput, p50 / p95 latency,
errors (the target is zero) and the server's RSS before and after; the server is stopped at the end.
Only 127.0.0.1 is used. Exits 1 on any error, 0 otherwise (also when app.py is not there yet: skipped).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_explain import (  # noqa: E402
    REPO,
    RESULTS,
    bench_image,
    exit_on_sigterm,
    machine_info,
    peak_rss_mb,
    prepare_weights,
    rss_mb,
)

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, deadline: float, interval: float = 0.5) -> str | None:
    """None once the page answers 200 (asked every ``interval`` s); else why not (the server exited or the
    deadline passed)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return f"the app exited with code {server.returncode} before answering"
        try:
            with opener.open(url, timeout=5) as response:
                if response.status == 200:
                    return None
        except OSError:
            pass
        time.sleep(interval)
    return "the app did not answer before the start-up timeout"


def stop(server: subprocess.Popen) -> None:
    """Stop the server this script started: SIGINT, then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if server.poll() is not None:
            return
        server.send_signal(sig)
        try:
            server.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def client_loop(url: str, image: Path, requests: int, deadline: list[float], downloads: Path,
                start: threading.Barrier, latencies: list[float], errors: list[str]) -> None:
    """One client: its own connection, ``requests`` requests one after another, none started after the deadline.

    ``deadline`` holds the end time once every client is connected (the barrier's action sets it).
    """
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False, analytics_enabled=False, download_files=str(downloads))
    except Exception as exc:  # counted, not raised: the other clients go on
        errors.append(f"connect: {type(exc).__name__}: {exc}")
        start.abort()
        return
    try:
        start.wait()
    except threading.BrokenBarrierError:
        return
    for _ in range(requests):
        remaining = deadline[0] - time.monotonic()
        if remaining <= 0:
            errors.append("not sent: the time limit had passed")
            continue
        began = time.monotonic()
        job = client.submit(handle_file(str(image)), api_name="/explain")
        try:
            job.result(timeout=remaining)
            latencies.append(time.monotonic() - began)
        except Exception as exc:  # a failed or timed-out request is an error of the run
            job.cancel()
            errors.append(f"{type(exc).__name__}: {exc}"[:300])


def rss_over_requests(samples: list[tuple[float, int, float]], after: float) -> dict:
    """The server's RSS when the first request of the load had been answered and after the last one, their
    difference, and the RSS every 25 answered requests (from samples of (time, answered, RSS MB))."""
    answered = [(count, rss) for _, count, rss in samples if count >= 1]
    if not answered:
        return {}
    first = answered[0][1]
    series: dict[int, float] = {}
    for count, rss in answered:
        series.setdefault(count // 25 * 25, rss)
    return {"server_rss_first_request_mb": round(first, 1), "server_rss_last_request_mb": round(after, 1),
            "server_rss_growth_mb": round(after - first, 1),
            "server_rss_every_25_requests_mb": {str(k): round(v, 1) for k, v in sorted(series.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=25, help="requests per client (default 25)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for all requests (default 900)")
    parser.add_argument("--startup-timeout", type=float, default=300, help="seconds for the app to come up")
    parser.add_argument("--set", dest="set_name", help="model set name (default: the manifest's default set)")
    parser.add_argument("--weights-dir", help="weights folder holding manifest.json (default: weights/)")
    parser.add_argument("--random", action="store_true", help="random-weight models even if a set exists")
    parser.add_argument("--image", help="image to send (default: the first examples/scene_*.png)")
    parser.add_argument("--app", default=str(REPO / "app.py"), help="the app's launch script (default app.py)")
    parser.add_argument("--json", default=str(RESULTS / "load.json"), help="where to write the results")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be at least 1")
    out_path = Path(args.json)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    app = Path(args.app)
    if not app.exists():
        message = (f"skipped: {app} is not there yet; the load test launches the app as "
                   f"python app.py --host {LOOPBACK} --port P [--set NAME] [--weights-dir DIR]")
        print(message)
        out_path.write_text(json.dumps({"benchmark": "bench/load_test.py", "skipped": message}, indent=2) + "\n")
        return 0

    for key in ("NO_PROXY", "no_proxy"):  # gradio_client's httpx honours proxy variables: keep loopback direct
        os.environ[key] = ",".join(filter(None, [os.environ.get(key), LOOPBACK, "localhost"]))
    exit_on_sigterm()
    set_name, weights_dir, set_note = prepare_weights(args.set_name, args.weights_dir, args.random)
    image = bench_image(args.image)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}/"
    command = [sys.executable, str(app), "--host", LOOPBACK, "--port", str(port), "--weights-dir", str(weights_dir)]
    if set_name:
        command += ["--set", set_name]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_NAME": LOOPBACK,
           "GRADIO_SERVER_PORT": str(port), "ATTNVIZ_WEIGHTS": str(weights_dir)}
    work = Path(tempfile.mkdtemp(prefix="attnviz-load-"))  # the server's log and the clients' downloads
    atexit.register(shutil.rmtree, work, True)
    log_path = work / "server.log"
    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, torch {machine['torch']}")
    print(f"models: {set_note}\nimage: {image}\nstarting: {' '.join(command)}")
    result: dict = {"benchmark": "bench/load_test.py", "machine": machine, "notes": [set_note],
                    "config": {"clients": args.clients, "requests_per_client": args.requests,
                               "timeout_s": args.timeout, "image": str(image), "url": url, "command": command}}
    with open(log_path, "wb") as log:
        started = time.monotonic()
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        try:
            problem = wait_until_up(url, server, started + args.startup_timeout)
            if problem:
                log.flush()
                tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
                print(f"failed: {problem}\n" + "\n".join(tail))
                result["error"] = problem
                result["server_log_tail"] = tail
                out_path.write_text(json.dumps(result, indent=2) + "\n")
                return 1
            result["startup_s"] = round(time.monotonic() - started, 1)
            result["server_rss_after_start_mb"] = rss_mb(server.pid)
            from gradio_client import Client, handle_file

            began = time.monotonic()
            try:
                warm = Client(url, verbose=False, analytics_enabled=False, download_files=str(work))
                warm.predict(handle_file(str(image)), api_name="/explain")
            except Exception as exc:  # reported with the server's log, not as a traceback
                log.flush()
                tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
                print(f"failed: the first request: {type(exc).__name__}: {exc}\n" + "\n".join(tail))
                result["error"] = f"the first request failed: {type(exc).__name__}: {exc}"
                result["server_log_tail"] = tail
                out_path.write_text(json.dumps(result, indent=2) + "\n")
                return 1
            result["first_request_s"] = round(time.monotonic() - began, 2)
            result["server_rss_before_mb"] = rss_mb(server.pid)

            latencies: list[float] = []
            errors: list[str] = []
            deadline = [time.monotonic() + args.timeout + 120]  # reset when all clients are connected
            clock = []

            def start_clock() -> None:
                clock.append(time.monotonic())
                deadline[0] = clock[0] + args.timeout

            # The server's RSS against the requests answered so far, sampled while the load runs: its growth from
            # the first answered request to the last is the target (<= 50 MB), not from before the load.
            samples: list[tuple[float, int, float]] = []
            sampling = threading.Event()

            def sample_rss() -> None:
                while not sampling.wait(0.25):
                    samples.append((time.monotonic(), len(latencies), rss_mb(server.pid)))

            sampler = threading.Thread(target=sample_rss, daemon=True)
            sampler.start()
            barrier = threading.Barrier(args.clients + 1, action=start_clock)
            threads = [threading.Thread(target=client_loop, daemon=True,
                                        args=(url, image, args.requests, deadline, work, barrier, latencies, errors))
                       for _ in range(args.clients)]
            for thread in threads:
                thread.start()
            try:
                barrier.wait(timeout=120)
            except threading.BrokenBarrierError:
                errors.append("the clients could not all connect")
            t0 = clock[0] if clock else time.monotonic()
            for thread in threads:  # the clients stop on their own by the deadline; a hung one is left behind
                thread.join(max(0.0, deadline[0] + 30 - time.monotonic()))
            wall = time.monotonic() - t0
            hung = sum(thread.is_alive() for thread in threads)
            if hung:
                errors.append(f"{hung} clients still waiting after the time limit")
            result["server_rss_after_mb"] = rss_mb(server.pid)
            result["server_peak_rss_mb"] = peak_rss_mb(server.pid)
            sampling.set()
            sampler.join()
            result.update(rss_over_requests(samples, result["server_rss_after_mb"]))
        finally:
            stop(server)

    ms = np.asarray(latencies) * 1000
    done = len(latencies)
    result.update({
        "completed": done,
        "expected": args.clients * args.requests,
        "errors": args.clients * args.requests - done,  # every request that did not return a result
        "error_samples": errors[:10],
        "wall_s": round(wall, 2),
        "throughput_rps": round(done / wall, 3) if wall > 0 else None,
        "latency_p50_ms": round(float(np.percentile(ms, 50)), 1) if done else None,
        "latency_p95_ms": round(float(np.percentile(ms, 95)), 1) if done else None,
        "latency_max_ms": round(float(ms.max()), 1) if done else None,
    })
    print(f"{done}/{result['expected']} requests in {result['wall_s']} s: {result['throughput_rps']} requests/s, "
          f"p50 {result['latency_p50_ms']} ms, p95 {result['latency_p95_ms']} ms, errors {result['errors']}")
    print(f"server RSS: {result['server_rss_before_mb']} MB before, {result['server_rss_after_mb']} MB after, "
          f"peak {result['server_peak_rss_mb']} MB; from the first answered request to the last: "
          f"{result.get('server_rss_growth_mb')} MB")
    for sample in errors[:5]:
        print(f"error: {sample}")
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
