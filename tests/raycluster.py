"""A real Ray cluster for the tests: a head and worker nodes as separate ``ray start`` processes on 127.0.0.1.

Each node is ``tests/raynode.py`` (Ray's own ``ray start --block``, kept on loopback) in a process group of its
own, with 1 CPU, no dashboard, no usage statistics, a temp folder of the cluster's and the cluster's own
authentication token (``Cluster.env``: drivers need it too); ``stop`` ends a node's
group with SIGTERM (``ray start --block`` then stops what it started), ``kill`` with SIGKILL (a node lost).
``listening_sockets`` reads /proc to list every listening TCP and bound UDP socket of a set of processes, so a
test can check that nothing listens beyond loopback.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from servers import free_port

HERE = Path(__file__).resolve().parent
NODE_START_TIMEOUT_S = 600  # a ceiling: on a machine that is training, Ray's Python processes start slowly
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


@dataclass
class Node:
    process: subprocess.Popen
    log: Path
    lines: list[str] = field(default_factory=list)

    def wait_started(self, timeout: float = NODE_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("Ray runtime started" in line for line in self.lines):
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n" + "".join(self.lines[-30:]))
            time.sleep(0.2)  # reading another process's output: no event to wait on
        raise TimeoutError(f"the Ray node did not start within {timeout} s:\n" + "".join(self.lines[-30:]))

    def pids(self) -> set[int]:
        """The node's processes: its process group (ray start, GCS, raylet, agents) and their descendants."""
        return _group_and_descendants(self.process.pid)

    def stop(self, grace: float = 60) -> None:
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def kill(self) -> None:
        """Lose the node at once: SIGKILL to its process group (its raylet among them)."""
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _group_and_descendants(pgid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.add(int(entry.name))
            except ProcessLookupError:
                continue
    tree, todo = _children(), list(found)
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _follow(process: subprocess.Popen, lines: list[str], log: Path) -> None:
    with log.open("w") as sink:
        for line in process.stdout:
            lines.append(line)
            sink.write(line)
            sink.flush()


def auth_env(folder: Path) -> dict[str, str]:
    """Ray token authentication with a token of its own in ``folder``: the environment for every node and driver.

    Ray 2.60 turns token authentication on for a new cluster when ``~/.ray/auth_token`` exists (a local
    ``ray.init`` writes one), and a joining node without the token is refused: the tests name their own."""
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    token = folder / "auth_token"
    token.write_text(generate_new_authentication_token())
    token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def start_node(temp_dir: Path, log_dir: Path, name: str, head_port: int | None = None, address: str | None = None,
               cpus: int = 1, gpus: int = 0, env: dict[str, str] | None = None) -> Node:
    """``ray start --block`` for a head (``head_port``) or a worker node joining ``address``; ``gpus``: GPUs the
    node declares (Ray's resources are logical: declared on a machine without one, a worker given it finds no
    CUDA device)."""
    args = [sys.executable, str(HERE / "raynode.py"), "--node-ip-address=127.0.0.1", "--disable-usage-stats",
            f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--temp-dir={temp_dir}", "--object-store-memory=100000000",
            "--block"]
    if head_port is not None:
        args += ["--head", f"--port={head_port}", "--include-dashboard=false"]
    else:
        args += [f"--address={address}"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **RAY_ENV, **(env or {})}, start_new_session=True)
    node = Node(process, log_dir / f"{name}.log")
    threading.Thread(target=_follow, args=(process, node.lines, node.log), daemon=True).start()
    return node


class Cluster:
    """A head and ``workers`` worker nodes, 1 CPU (and ``gpus`` GPUs) each, on 127.0.0.1; ``address`` is the
    head's."""

    def __init__(self, root: Path, workers: int = 1, gpus: int = 0) -> None:
        root.mkdir(parents=True, exist_ok=True)
        # Ray's sockets live under its temp folder, and a socket path has at most 107 bytes: keep it short
        self.temp_dir = Path(tempfile.mkdtemp(prefix="attnviz-ray-"))
        self.root = root
        self.env = auth_env(self.temp_dir)  # what a driver needs to join: the cluster's token
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.head = start_node(self.temp_dir, root, "head", head_port=port, gpus=gpus, env=self.env)
        self.nodes = [self.head]
        try:
            self.head.wait_started()
            for i in range(workers):
                node = start_node(self.temp_dir, root, f"node{i + 1}", address=self.address, gpus=gpus,
                                  env=self.env)
                node.wait_started()
                self.nodes.append(node)
        except BaseException:
            self.stop()
            raise

    def pids(self) -> set[int]:
        return set().union(*(node.pids() for node in self.nodes))

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _socket_inodes(pids: set[int]) -> dict[str, int]:
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    return inodes


def _address(hex_address: str) -> str:
    host = bytes.fromhex(hex_address)
    if len(host) == 4:
        return str(ipaddress.IPv4Address(host[::-1]))
    words = b"".join(host[i : i + 4][::-1] for i in range(0, 16, 4))  # four little-endian words
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)


def listening_sockets(pids: set[int]) -> list[tuple[str, str, int, int]]:
    """(protocol, address, port, pid) of every listening TCP socket and bound UDP socket of ``pids``."""
    inodes = _socket_inodes(pids)
    found = []
    for protocol in ("tcp", "tcp6", "udp", "udp6"):
        try:
            rows = Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode not in inodes or (protocol.startswith("tcp") and state != "0A"):  # 0A: LISTEN
                continue
            host, port = local.split(":")
            found.append((protocol, _address(host), int(port, 16), inodes[inode]))
    return found


def beyond_loopback(pids: set[int]) -> list[tuple[str, str, int, int]]:
    """The sockets of ``pids`` that listen on an address other than a loopback one."""
    return [s for s in listening_sockets(pids) if not ipaddress.ip_address(s[1]).is_loopback]
