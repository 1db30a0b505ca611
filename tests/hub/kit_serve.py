"""Running the server the way the README's commands do, for the hub tests: `steer serve` as a child process
(`steer_serve`), the app `steer serve` builds in a thread (`serve_in_process`), and any `steer` command in this
process (`steer`)."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServeProcess:
    """A `steer serve` process (the README's command line) on a free loopback port."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_ready(self, timeout_s: float = 180) -> float:
        """Seconds from now until /ready answers 200 (fails with the server's log if it exits first)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            assert self.proc.poll() is None, f"steer serve exited:\n{self.log.read_text()[-4000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout_s} s:\n{self.log.read_text()[-4000:]}")


@contextlib.contextmanager
def steer_serve(args: list[str], env: dict[str, str], log: Path) -> Iterator[ServeProcess]:
    port = free_port()
    cmd = [sys.executable, "-m", "steer_cli", "serve", *args, "--port", str(port), "--log-level", "warning"]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield ServeProcess(proc, f"http://127.0.0.1:{port}", log)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def serve_in_process(settings: ServerSettings) -> Iterator[str]:
    """The app `steer serve` builds for `settings`, under uvicorn as it runs it, in a thread; yields its URL."""
    from server.app import create_app
    from server.uvicorn_server import uvicorn_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while True:
            assert thread.is_alive() and time.monotonic() < deadline, "the server never became ready"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def steer(argv: list[str]) -> str:
    """Run a `steer` command in this process; its stdout (its stderr in the failure message)."""
    from steer_cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    assert rc == 0, f"steer {argv[0]} failed: {err.getvalue()}"
    return out.getvalue()
