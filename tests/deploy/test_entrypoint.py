"""The image's command line, run here: `steer serve` configured only by the environment the Dockerfile sets.

No Docker engine runs on this machine, so the test does what `docker run` would, minus the container:
the ENV, ENTRYPOINT and CMD are read from the Dockerfile, the project is a non-editable wheel install
(as in the image), the culture world stands in for the mounted model/SAE/catalog, and the port is a free
one instead of 8000 (as `-p` would map it). Nothing else is overridden and no CLI flag is added.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.kit_manifests import DOCKER, DOCKERFILES, REPO, drain_timeout_s, image_config

pytestmark = pytest.mark.slow

API_KEY = "deploy-test-key"
PACKAGES = ("steer_cli", "server", "vectors", "trainer")


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel and installed (without dependencies) into its own folder."""
    root = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    # The venv's setuptools when it has one (offline, fast); otherwise pip fetches the build backend.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    build = [*pip, "wheel", "--no-deps", *isolation, "--wheel-dir", str(root / "dist"), str(REPO)]
    subprocess.run(build, check=True, timeout=300, cwd=root)
    (wheel,) = (root / "dist").glob("sparse_steer-*.whl")
    site = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    return site


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, key: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(ln for ln in lines if '"GET /' not in ln)[-4000:]  # drop the polls' access lines


def _wait_for(
    url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float, key: str | None = None
) -> None:
    end = time.monotonic() + deadline_s
    status = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            status, _ = _get(url, key)
        except OSError:
            status = None
        if status == 200:
            return
        time.sleep(0.25)
    pytest.fail(f"{url} not 200 within {deadline_s:.0f}s (last status {status}):\n{_log_tail(log)}")


@pytest.mark.parametrize(("kind", "target"), [("cpu", "runtime"), ("gpu", None)])
def test_image_command_line_serves_the_culture_world(
    kind: str, target: str | None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    image = image_config(DOCKERFILES[kind], target)
    if image.env.get("STEER_DEVICE", "").startswith("cuda"):
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip(f"{kind} image sets STEER_DEVICE={image.env['STEER_DEVICE']}; no CUDA here")
    try:  # the session-wide culture world from tests/conftest.py
        world_dir = Path(request.getfixturevalue("world_dir"))
    except pytest.FixtureLookupError:
        pytest.skip("culture-world fixture `world_dir` not available")
    wheel_site = Path(request.getfixturevalue("wheel_site"))
    port = _free_port()
    venv_bin = Path(sys.executable).parent
    env = {
        # What a container has: the image's ENV, a PATH, and the run-time values `docker run` would give.
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(wheel_site),  # the wheel's code, not the checkout's (the image has no sources)
        **image.env,
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        # The mounts: the culture world in place of the hub model, the SAE and the catalog volume.
        "STEER_MODEL": str(world_dir / "model"),
        "STEER_SAE": str(world_dir / "sae"),
        "STEER_VECTORS": str(world_dir / "vectors"),
        # `-p HOST_PORT:8000` in a container; here the process must bind a free port itself.
        "STEER_PORT": str(port),
        # As Kubernetes would inject it from the steer-secrets Secret.
        "STEER_API_KEY": API_KEY,
    }
    command = image.command_line
    assert command == ["steer", "serve"]
    executable = shutil.which(command[0], path=env["PATH"])
    assert executable, "the `steer` console script is not installed"
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import importlib.util as u; print(*(u.find_spec(p).origin for p in {PACKAGES}))",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(f).is_relative_to(wheel_site) for f in where), where
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([executable, *command[1:]], env=env, cwd=tmp_path, stdout=out, stderr=out)
    try:
        # Liveness answers while the model still loads, and without a key.
        _wait_for(f"{base}/health", proc, log, 60)
        _wait_for(f"{base}/ready", proc, log, 240, key=API_KEY)
        status, body = _get(f"{base}/vectors", key=API_KEY)
        assert status == 200 and json.loads(body), body
        assert _get(f"{base}/ready")[0] == 401, "the key guards /ready: probes must carry it"

        # The HEALTHCHECK (liveness) and the Kubernetes/compose readiness exec probe, as the image runs them.
        for path in ("/health", "/ready"):
            probe = subprocess.run(
                [sys.executable, str(DOCKER / "healthcheck.py"), path],
                env=env,
                capture_output=True,
                timeout=30,
            )
            assert probe.returncode == 0, (path, probe.stderr)

        # `docker stop` / pod deletion: one SIGTERM to PID 1, then a drain and a clean exit.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=drain_timeout_s() + 10) == 0, _log_tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
