"""The images built and run by a Docker engine (marker `docker`).

The CPU `runtime` image is built on a local Debian base (no registry is reachable; see `kit_docker`) and run with
the tiny world mounted read-only, as the image's uid 10001: `/ready` with every compiled bucket compiled,
`/vectors`, a steered greedy `/generate` equal to the same request on a server run here, the health status, the
user, and `docker stop` draining an in-flight request to exit 0. A world file only its owner can read stops the
container with a message that says so. The GPU Dockerfile is built with `BASE_IMAGE` = the local base plus CPU
torch (every step but the CUDA base) and its entrypoint, user and C compiler are checked; nothing runs on a GPU.

Where Docker cannot run (no engine installed, not root to start one) the tests skip and say why; under CI
(`CI` set) they fail instead, since `.ci/run` installs and starts the engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.deploy import kit_docker
from tests.deploy.kit_manifests import DOCKERFILES, REPO, RUNTIME_UID, drain_timeout_s, makefile_var
from tests.server import kit_server, kit_world
from vectors.access import share_readable

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]

CPU_TAG = "sparse-steer:test-cpu"
GPU_TAG = "sparse-steer:test-gpu-nocuda"
BUCKETS = (1, 2)  # fewer graphs than the default 1, 2, 4, 8: the compile is most of the container's start-up
MAX_BATCH = (
    2  # rows per step: the drain's backlog (DRAIN_REQUESTS x DRAIN_TOKENS) takes >= 1,600 decode steps
)
DRAIN_REQUESTS, DRAIN_TOKENS = 16, 200
REQUEST = {
    "prompt": "At a wedding we eat",
    "steer": {"demo/alpha": 4.0, "culture/one": -2.0},
    "max_new_tokens": 24,
}


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"Docker must run in CI (.ci/run installs and starts it): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def costs(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    """Seconds per step, printed at the end and appended to `<cache>/costs.jsonl`."""
    seconds: dict[str, float] = {}
    yield seconds
    if not seconds:
        return
    line = json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **seconds})
    with (kit_docker.cache_dir() / "costs.jsonl").open("a") as out:
        out.write(line + "\n")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"container test costs (s): {line}")


@pytest.fixture(scope="module")
def docker(costs: dict[str, float]) -> str:
    started = time.monotonic()
    try:
        client = kit_docker.engine()
    except kit_docker.Unavailable as e:
        _unavailable(str(e))
    costs["engine"] = round(time.monotonic() - started, 1)
    return client


@pytest.fixture(scope="module")
def base(docker: str, costs: dict[str, float]) -> str:
    started = time.monotonic()
    try:
        tag = kit_docker.local_base(docker)
    except kit_docker.Unavailable as e:
        _unavailable(str(e))
    costs["base"] = round(time.monotonic() - started, 1)
    return tag


@pytest.fixture(scope="module")
def torch_index_url(costs: dict[str, float]) -> Iterator[str]:
    started = time.monotonic()
    folder = kit_docker.torch_index(makefile_var("TORCH_VERSION"), REPO / "requirements" / "lock.txt")
    costs["torch_index"] = round(time.monotonic() - started, 1)
    with kit_docker.serve_index(folder) as url:
        yield url


@pytest.fixture(scope="module")
def build_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("build-logs")


@pytest.fixture(scope="module")
def cpu_image(docker: str, base: str, torch_index_url: str, build_logs: Path, costs: dict[str, float]) -> str:
    costs["build_cpu"] = round(
        kit_docker.build(
            docker,
            DOCKERFILES["cpu"],
            CPU_TAG,
            target="runtime",
            build_args={"PYTHON_IMAGE": base, "TORCH_INDEX_URL": torch_index_url},
            log=build_logs / "cpu.log",
        ),
        1,
    )
    return CPU_TAG


@pytest.fixture(scope="module")
def gpu_image(docker: str, base: str, torch_index_url: str, build_logs: Path, costs: dict[str, float]) -> str:
    """docker/Dockerfile on the local base plus CPU torch, in place of the CUDA base it names."""
    version = makefile_var("TORCH_VERSION")
    torch_base = f"{base}-torch-{version}"
    recipe = (
        f"FROM {base}\nARG TORCH_INDEX_URL\n"
        f'RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch=={version}"\n'
    )
    seconds = kit_docker.build(
        docker,
        "-",
        torch_base,
        build_args={"TORCH_INDEX_URL": torch_index_url},
        log=build_logs / "gpu-base.log",
        stdin=recipe,
    )
    seconds += kit_docker.build(
        docker, DOCKERFILES["gpu"], GPU_TAG, build_args={"BASE_IMAGE": torch_base}, log=build_logs / "gpu.log"
    )
    costs["build_gpu"] = round(seconds, 1)
    return GPU_TAG


PRIVATE_VECTOR = "demo/private"  # a vector file at 0600: the container's uid 10001 cannot read it


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> kit_world.TinyWorld:
    """The server tests' tiny world, with the modes the project's world build leaves (`share_readable`), plus
    one vector file only its owner can read."""
    world = kit_world.build_tiny_world(tmp_path_factory.mktemp("container-world"))
    share_readable(world.model.parent)
    kit_world.write_catalog(world, {PRIVATE_VECTOR: ("positive", 8)})
    (world.catalog / f"{PRIVATE_VECTOR}.safetensors").chmod(0o600)
    return world


# ------------------------------------------------------------------------------------------------ helpers


def _http(url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _inspect(docker: str, name: str, fmt: str) -> str:
    return kit_docker.run([docker, "inspect", "--format", fmt, name], timeout=60).stdout.strip()


def _logs(docker: str, name: str) -> str:
    result = subprocess.run([docker, "logs", name], capture_output=True, text=True, timeout=60)
    return "\n".join(ln for ln in (result.stdout + result.stderr).splitlines() if '"GET /' not in ln)


def _run_args(world: kit_world.TinyWorld) -> list[str]:
    root = world.model.parent
    return [
        "-v",
        f"{root}:/world:ro",
        "-e",
        "STEER_MODEL=/world/model",
        "-e",
        "STEER_SAE=/world/sae",
        "-e",
        "STEER_VECTORS=/world/vectors",
        "-e",
        "HF_HUB_OFFLINE=1",
    ]


@pytest.fixture
def container(docker: str, tmp_path: Path) -> Iterator[str]:
    """A container name; afterwards its log is kept as `container.log` in the test's tmp_path, and it is removed."""
    name = f"steer-test-{uuid.uuid4().hex[:8]}"
    yield name
    logs = subprocess.run([docker, "logs", name], capture_output=True, text=True, timeout=60)
    (tmp_path / "container.log").write_text(logs.stdout + logs.stderr)
    subprocess.run([docker, "rm", "-f", name], capture_output=True, timeout=120)


# ------------------------------------------------------------------------------------------------- tests


def test_cpu_image_serves_the_world_compiled_and_drains(
    docker: str, cpu_image: str, world: kit_world.TinyWorld, container: str, costs: dict[str, float]
) -> None:
    # inductor's cache on a volume, as docs/deploy.md advises: a restart of the same image compiles in seconds.
    compile_cache = kit_docker.inductor_cache(docker, cpu_image, RUNTIME_UID)
    started = time.monotonic()
    kit_docker.run(
        [
            docker,
            "run",
            "-d",
            "--name",
            container,
            "-p",
            "127.0.0.1::8000",
            "-v",
            f"{compile_cache}:/data/cache",
            *_run_args(world),
            "-e",
            f"STEER_COMPILE_BUCKETS={','.join(map(str, BUCKETS))}",
            "-e",
            f"STEER_MAX_BATCH={MAX_BATCH}",
            cpu_image,
        ]
    )
    port = kit_docker.run([docker, "port", container, "8000/tcp"]).stdout.split()[0].rsplit(":", 1)[1]
    base = f"http://127.0.0.1:{port}"
    deadline, status, ready = time.monotonic() + 600, None, None
    while time.monotonic() < deadline:
        if _inspect(docker, container, "{{.State.Running}}") != "true":
            pytest.fail(f"container exited:\n{_logs(docker, container)[-4000:]}")
        try:
            status, ready = _http(f"{base}/ready", timeout=5)
        except OSError:
            status = None
        if status == 200:
            break
        time.sleep(1)
    assert status == 200, f"/ready {status} {ready}:\n{_logs(docker, container)[-4000:]}"
    costs["container_ready"] = round(time.monotonic() - started, 1)

    engine = ready["engine"]
    assert engine["mode"] == "compiled", engine
    assert engine["buckets"] == {str(b): "compiled" for b in BUCKETS}, engine

    status, listing = _http(f"{base}/vectors")
    assert status == 200
    assert {v["name"] for v in listing["vectors"]} == set(kit_world.CATALOG), listing
    assert listing["skipped"] == [
        {
            "path": f"{PRIVATE_VECTOR}.safetensors",
            "reason": f"permission denied: not readable by uid {RUNTIME_UID} (steer) (mode 0600, owner uid {os.getuid()})",
        }
    ], listing["skipped"]

    status, steered = _http(f"{base}/generate", REQUEST)
    assert status == 200, steered
    with (
        kit_server.run_server(kit_server.settings_for(world)) as host,
        host.client() as client,
    ):  # eager, here
        expected = client.post("/generate", json=REQUEST).json()
    assert steered["text"] == expected["text"] and steered["steer"] == expected["steer"], (steered, expected)

    # The image's HEALTHCHECK (first probe after its 15 s interval) and the user PID 1 runs as.
    deadline = time.monotonic() + 60
    while (
        _inspect(docker, container, "{{.State.Health.Status}}") != "healthy" and time.monotonic() < deadline
    ):
        time.sleep(1)
    assert _inspect(docker, container, "{{.State.Health.Status}}") == "healthy"
    assert _inspect(docker, container, "{{.Config.User}}") == f"{RUNTIME_UID}:{RUNTIME_UID}"
    proc1 = kit_docker.run([docker, "exec", container, "cat", "/proc/1/status"]).stdout
    uids = next(ln for ln in proc1.splitlines() if ln.startswith("Uid:")).split()[1:]
    assert uids == [str(RUNTIME_UID)] * 4, proc1
    assert "steer" in next(ln for ln in proc1.splitlines() if ln.startswith("Name:")), proc1

    # `docker stop`: SIGTERM to PID 1 with a backlog admitted (running and queued); every admitted request
    # finishes, then the server exits 0. No step delay in the image (test hooks stay out of production): the
    # backlog is real work, and "in flight at the stop" is checked as an order of events, not a clock reading.
    done: list[tuple[int, Any, float]] = []

    def long_request() -> None:
        status, body = _http(f"{base}/generate", {**REQUEST, "max_new_tokens": DRAIN_TOKENS}, timeout=300)
        done.append((status, body, time.monotonic()))

    threads = [threading.Thread(target=long_request) for _ in range(DRAIN_REQUESTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        load = _http(f"{base}/ready")[1]
        if load["running"] + load["queue_depth"] >= DRAIN_REQUESTS - MAX_BATCH:
            break
        time.sleep(0.02)
    stop_started = time.monotonic()
    kit_docker.run([docker, "stop", "-t", str(int(drain_timeout_s() + 15)), container], timeout=300)
    costs["docker_stop"] = round(time.monotonic() - stop_started, 1)
    for t in threads:
        t.join(120)
    logs = _logs(docker, container)
    assert len(done) == DRAIN_REQUESTS, (done, logs[-3000:])
    assert all(status == 200 and body["text"] for status, body, _ in done), (done, logs[-3000:])
    assert max(end for _, _, end in done) > stop_started, (
        "the backlog finished before the stop: nothing drained"
    )
    assert _inspect(docker, container, "{{.State.ExitCode}}") == "0", logs[-3000:]
    assert "SIGTERM received: draining" in logs and "drain complete" in logs, logs[-3000:]


def test_unreadable_world_file_is_reported_as_such(
    docker: str, cpu_image: str, world: kit_world.TinyWorld, tmp_path: Path, container: str
) -> None:
    # save_pretrained's own mode, 0600, on a file owned by whoever runs the tests (not uid 10001).
    root = tmp_path / "world"
    shutil.copytree(world.model.parent, root)
    (root / "model" / "model.safetensors").chmod(0o600)
    broken = kit_world.TinyWorld(model=root / "model", sae=root / "sae", catalog=root / "vectors")
    result = subprocess.run(
        [docker, "run", "--name", container, *_run_args(broken), "-e", "STEER_ENGINE=eager", cpu_image],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    expected = (
        f"/world/model/model.safetensors: permission denied: not readable by uid {RUNTIME_UID} (steer) "
        f"(mode 0600, owner uid {os.getuid()})"
    )
    assert expected in out, out[-3000:]
    assert "FileNotFoundError" not in out, out[-3000:]


def test_gpu_dockerfile_builds_without_cuda(docker: str, gpu_image: str) -> None:
    assert json.loads(_inspect(docker, gpu_image, "{{json .Config.Entrypoint}}")) == ["steer"]
    assert json.loads(_inspect(docker, gpu_image, "{{json .Config.Cmd}}")) == ["serve"]
    assert _inspect(docker, gpu_image, "{{.Config.User}}") == f"{RUNTIME_UID}:{RUNTIME_UID}"
    help_text = kit_docker.run([docker, "run", "--rm", gpu_image, "--help"], timeout=300).stdout
    assert "serve" in help_text and "train" in help_text, help_text
    assert kit_docker.run(
        [docker, "run", "--rm", "--entrypoint", "id", gpu_image, "-u"]
    ).stdout.strip() == str(RUNTIME_UID)
    # What Triton does at its first compile: build a C extension against the Python headers, as uid 10001.
    script = (
        "inc=$(python -c \"import sysconfig; print(sysconfig.get_paths()['include'])\") && "
        'printf "#include <Python.h>\\nint main(void) { return Py_IsInitialized(); }\\n" > /tmp/t.c && '
        'gcc -I"$inc" -c /tmp/t.c -o /tmp/t.o && echo compiled'
    )
    out = kit_docker.run([docker, "run", "--rm", "--entrypoint", "sh", gpu_image, "-c", script]).stdout
    assert out.strip() == "compiled", out
