"""Helpers for tests that start the real app in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 600  # a ceiling, not a wait: on a machine busy training, importing torch and gradio is slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll ``url`` (bypassing any proxy) until it answers 200; fail if the process exits first."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}: {process.stdout.read()}")
        try:
            with opener.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)  # polling a port that is not open yet: there is no event to wait on
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen, grace: float = 30) -> None:
    """Terminate the process, killing it if it does not exit within ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serving(script: str | Path, *args: str, env: dict | None = None, quiet: bool = False) -> Iterator[str]:
    """``python SCRIPT ARGS --port PORT`` from the repository root on a free port; yields its URL and stops it
    afterwards. ``quiet`` sends its output nowhere (else it is read when the app fails to start)."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    output = subprocess.DEVNULL if quiet else subprocess.PIPE
    process = subprocess.Popen([sys.executable, str(script), *args, "--port", str(port)], cwd=REPO, env=env,
                               stdout=output, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process, STARTUP_TIMEOUT_S)
        yield url
    finally:
        stop(process)


def running_app(weights_dir: Path, *extra: str):
    """``python app.py --weights-dir DIR`` on a free port (a context manager yielding its URL)."""
    return serving("app.py", "--weights-dir", str(weights_dir), *extra)
