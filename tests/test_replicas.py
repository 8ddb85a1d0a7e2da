"""Two app replicas behind nginx, each client kept on its replica by a cookie: scripts/replicas.sh run whole.

The script starts two ``app.py`` processes (the built-in set) and nginx with deploy/nginx-replicas.conf, all on
127.0.0.1. gradio_client's ``Client`` keeps the cookies of its first request (GET /config) and sends them with
every later one (upload, queue/join, the result stream, the heartbeat, file downloads): it needs nothing to stay
on one replica. Six clients at once each send a different example scene to /explain; nginx's access log (with
the cookie, the replica that answered and the client's User-Agent) shows where each request went. It needs
nginx (the script installs it with apt-get as root); outside CI (CI=true) a machine without it skips the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from servers import REPO, STARTUP_TIMEOUT_S, free_port, wait_until_serving

from attnviz.images import load_image, preprocess
from attnviz.weights import Manifest

WEIGHTS = REPO / "weights"
EXAMPLES = sorted((REPO / "attnviz" / "examples").glob("scene_*.png"))
CLIENTS = 6
COOKIE = "attnviz_replica"
LINE = re.compile(r'"(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d+) \d+ cookie="(?P<cookie>[^"]*)" '
                  r'upstream="(?P<upstream>[^"]*)" replica="(?P<replica>[^"]*)" set_cookie="(?P<set_cookie>[^"]*)" '
                  r'request_time=\S+ agent="(?P<agent>[^"]*)"')


def why_it_cannot_run() -> str | None:
    if shutil.which("nginx") or Path("/usr/sbin/nginx").is_file():
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return None  # scripts/replicas.sh installs it
    return "nginx is missing, and only root can have scripts/replicas.sh install it with apt-get"


def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class Front:
    def __init__(self, folder: Path):
        self.folder = folder
        self.port, *self.app_ports = distinct_free_ports(3)
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {k: v for k, v in os.environ.items() if k != "ATTNVIZ_WEIGHTS"}
        env.update(GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            ["bash", "scripts/replicas.sh", "--port", str(self.port), "--app-ports", ",".join(map(str, self.app_ports)),
             "--dir", str(folder), "--", "--weights-dir", str(WEIGHTS)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def access_log(self) -> list[dict[str, str]]:
        lines = (self.folder / "logs" / "access.log").read_text().splitlines()
        return [match.groupdict() for match in map(LINE.search, lines) if match]

    def pids(self) -> list[int]:
        """nginx's master and the replicas' processes, from the script's pid files."""
        files = [self.folder / "nginx.pid", *sorted(self.folder.glob("replica-*.pid"))]
        return [int(file.read_text()) for file in files if file.is_file()]


@pytest.fixture(scope="module")
def front(tmp_path_factory) -> Iterator[Front]:
    reason = why_it_cannot_run()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    front = Front(tmp_path_factory.mktemp("replicas"))
    try:
        wait_until_serving(front.url, front.process, STARTUP_TIMEOUT_S)
        yield front
    finally:
        if front.process.poll() is None:
            front.process.terminate()
            front.process.wait(timeout=180)


def expected_class(path: Path) -> str:
    return path.stem.split("_", 2)[2]  # scene_00_cat.png -> cat


def view_of(path: Path) -> np.ndarray:
    """The preprocessed view the built-in set's models see for an image file."""
    return preprocess(load_image(path), Manifest(WEIGHTS).get("builtin").preprocessing).view


@pytest.mark.slow
def test_a_client_without_the_cookie_gets_one_and_a_client_with_it_keeps_its_replica(front):
    first = httpx.get(front.url + "config", timeout=60)
    assert first.status_code == 200
    replica = first.cookies[COOKIE]
    assert replica in ("r1", "r2") and first.headers["x-attnviz-replica"] == replica
    assert "HttpOnly" in first.headers["set-cookie"] and "Path=/" in first.headers["set-cookie"]
    for _ in range(4):
        again = httpx.get(front.url + "config", cookies={COOKIE: replica}, timeout=60)
        assert again.headers["x-attnviz-replica"] == replica
        assert "set-cookie" not in again.headers  # pinned already: nothing to set
    made_up = httpx.get(front.url + "config", cookies={COOKIE: "elsewhere"}, timeout=60)
    assert made_up.cookies[COOKIE] == made_up.headers["x-attnviz-replica"] in ("r1", "r2")


@pytest.mark.slow
def test_concurrent_clients_spread_over_both_replicas_and_each_stays_on_its_own(front):
    from gradio_client import Client, handle_file

    assert len(EXAMPLES) >= CLIENTS
    scenes = EXAMPLES[:CLIENTS]
    lines_before = len(front.access_log())

    def ask(index: int):
        agent = f"attnviz-test-replicas-client-{index}"
        client = Client(front.url, analytics_enabled=False, verbose=False, headers={"user-agent": agent})
        cookie = client.cookies.get(COOKIE)  # taken from the first answer (GET /config) by gradio_client itself
        answer = client.predict(handle_file(str(scenes[index])), models=["resnet50"], api_name="/explain")
        return agent, cookie, answer

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(ask, range(CLIENTS)))
    took = time.monotonic() - started

    log = front.access_log()[lines_before:]
    by_agent = defaultdict(list)
    for line in log:
        by_agent[line["agent"]].append(line)
    placed = {}
    for path, (agent, cookie, (summary, images, _)) in zip(scenes, answers, strict=True):
        assert cookie in ("r1", "r2"), f"{agent}: gradio_client kept no {COOKIE} cookie from its first answer"
        requests = by_agent[agent]
        assert len(requests) >= 4, f"{agent}: {len(requests)} requests in nginx's log"
        # The first request (GET /config) came without the cookie and got it; every later one carried it and was
        # answered by that replica, nothing else set a cookie.
        assert requests[0]["path"].endswith("/config") and requests[0]["cookie"] == "-"
        assert requests[0]["set_cookie"].startswith(f"{COOKIE}={cookie};")
        assert {line["replica"] for line in requests} == {cookie}, f"{agent}: {requests}"
        assert all(line["cookie"] == cookie and line["set_cookie"] == "" for line in requests[1:]), requests
        assert any("/queue/join" in line["path"] for line in requests)
        assert any("/queue/data" in line["path"] for line in requests)
        assert any("/upload" in line["path"] for line in requests)
        assert any("/file=" in line["path"] for line in requests)  # the pictures, from the replica that made them
        # the answer is this client's own: its scene's class, and the view of its image
        assert summary["models"]["resnet50"]["top"][0]["name"] == expected_class(path), (agent, path.name)
        np.testing.assert_array_equal(np.asarray(Image.open(images[0]["image"]).convert("RGB")), view_of(path))
        placed[path.name] = cookie
    spread = Counter(placed.values())
    print(f"\n{CLIENTS} concurrent clients in {took:.0f} s: {dict(sorted(spread.items()))}; {placed}")
    assert set(spread) == {"r1", "r2"}  # round robin over new clients: both replicas have some
    assert max(spread.values()) - min(spread.values()) <= 2  # and neither has nearly all


@pytest.mark.slow
def test_sigterm_stops_nginx_and_every_replica(front):
    pids = front.pids()
    assert len(pids) == 3
    front.process.terminate()
    front.process.wait(timeout=180)
    output = front.process.stdout.read()
    assert "stopping" in output, output
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.2)  # the script waits for them, so this is at most a moment
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    for port in (front.port, *front.app_ports):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
