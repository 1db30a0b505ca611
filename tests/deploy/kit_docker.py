"""Docker for the container tests, on machines that reach no container registry.

- `engine()`: a Docker client that builds with BuildKit, and a running engine (dockerd is started when it is
  installed but not running, as root; its log goes to the cache folder).
- `local_base()`: the stand-in for `python:3.11-slim-bookworm`: Debian bookworm from `debootstrap` (Debian's
  Python 3.11, its headers, a venv on PATH), this machine's CA certificates and a `pip.conf` that names them,
  `docker import`ed. Kept by content: the tag, and the rootfs tarball in the cache folder, are named by a hash of
  every input, so a changed recipe or CA bundle makes a new one and an unchanged one is never rebuilt.
- `torch_index()`: torch's CPU wheel and its dependencies (pip's own download, which takes the CPU wheel from the
  configured find-links) laid out as a package index, served on loopback to `docker build --network host`.

The cache folder is `$STEER_DOCKER_CACHE`, else `$XDG_CACHE_HOME/sparse-steer/docker` (outside the repository).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.deploy.kit_manifests import REPO

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("STEER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What python:3.11-slim-bookworm has that the images rely on: Python 3.11 with its headers (inductor's and
# Triton's generated code includes Python.h), a pip, and CA certificates.
BASE_PACKAGES = ("python3", "python3-venv", "python3-dev", "ca-certificates")
BASE_VENV = "/opt/venv"
BASE_PIP_CONF = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
BASE_CHANGES = (
    f"ENV PATH={BASE_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
# A fixed port keeps the build's TORCH_INDEX_URL, and so BuildKit's layer cache, the same from run to run.
TORCH_INDEX_PORT = int(os.environ.get("STEER_TORCH_INDEX_PORT", "38231"))


class Unavailable(Exception):
    """Docker cannot run here; the message says why."""


def cache_dir() -> Path:
    """Where the base tarball, the torch index and the dockerd log live (created on first use)."""
    root = os.environ.get("STEER_DOCKER_CACHE") or (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparse-steer" / "docker"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(cmd: Sequence[str], timeout: float = 900, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capturing text output; raise with its output's tail when it fails."""
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-6000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {result.returncode}:\n{tail}")
    return result


# ---------------------------------------------------------------------------------------------- engine


def _builds_with_buildkit(client: str) -> bool:
    """Whether `client build` uses BuildKit: built into clients before 23.0, a buildx plugin after."""
    try:
        out = subprocess.run(
            [client, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        major = int(re.match(r"(\d+)", out).group(1))  # type: ignore[union-attr]
    except (OSError, subprocess.SubprocessError, AttributeError, ValueError):
        return False
    if major < 23:
        return True
    return subprocess.run([client, "buildx", "version"], capture_output=True, timeout=30).returncode == 0


def _clients() -> list[str]:
    """Every `docker` on PATH, in PATH order."""
    found: list[str] = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        exe = Path(folder) / "docker"
        if exe.is_file() and os.access(exe, os.X_OK) and str(exe.resolve()) not in map(str, found):
            found.append(str(exe.resolve()))
    return found


def _engine_up(client: str) -> bool:
    return subprocess.run([client, "info"], capture_output=True, timeout=60).returncode == 0


def engine() -> str:
    """A Docker client that builds with BuildKit, with its engine running (started here if need be)."""
    clients = [c for c in _clients() if _builds_with_buildkit(c)]
    if not clients:
        raise Unavailable("no Docker client that builds with BuildKit (apt-get install docker.io)")
    client = clients[0]
    if _engine_up(client):
        return client
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise Unavailable("no Docker engine: dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise Unavailable("the Docker engine is not running, and only root may start dockerd")
    log = cache_dir() / "dockerd.log"
    with log.open("ab") as out:
        subprocess.Popen([dockerd], stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if _engine_up(client):
            return client
        time.sleep(1)
    raise Unavailable(f"dockerd did not start within 90 s; {log}:\n{log.read_text(errors='replace')[-2000:]}")


def image_exists(client: str, tag: str) -> bool:
    return subprocess.run([client, "image", "inspect", tag], capture_output=True, timeout=60).returncode == 0


# ------------------------------------------------------------------------------------------ local base


def _ca_bundle() -> Path:
    """This machine's CA bundle (the one pip and Python verify with)."""
    cafile = os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().cafile
    if not cafile or not Path(cafile).is_file():
        raise Unavailable("no CA bundle found to give the base image (set SSL_CERT_FILE)")
    return Path(cafile).resolve()


def base_key() -> str:
    """A hash of everything the base is made of: the recipe, the packages, the mirror and the CA bundle."""
    inputs = {
        "suite": DEBIAN_SUITE,
        "mirror": DEBIAN_MIRROR,
        "packages": BASE_PACKAGES,
        "venv": BASE_VENV,
        "pip.conf": BASE_PIP_CONF,
        "changes": BASE_CHANGES,
        "ca": hashlib.sha256(_ca_bundle().read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _make_rootfs_tarball(tarball: Path) -> None:
    """debootstrap the base, give it a venv, the CA bundle and pip.conf, and pack it (root only)."""
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise Unavailable(
            "building the local base image needs root and debootstrap (apt-get install debootstrap)"
        )
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=cache_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            timeout=1200,
        )
        run(["chroot", str(rootfs), "/usr/bin/python3", "-m", "venv", BASE_VENV])
        shutil.copyfile(_ca_bundle(), rootfs / "etc/ssl/certs/ca-certificates.crt")
        (rootfs / "etc/pip.conf").write_text(BASE_PIP_CONF)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = tarball.with_suffix(".partial")
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], timeout=600)
        partial.rename(tarball)


def local_base(client: str) -> str:
    """The tag of the local base image, made (debootstrap, import) only when no cached copy exists."""
    key = base_key()
    tag = f"sparse-steer-base:{key}"
    if image_exists(client, tag):
        return tag
    tarball = cache_dir() / f"base-{key}.tar"
    if not tarball.exists():
        _make_rootfs_tarball(tarball)
    changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
    run([client, "import", *changes, str(tarball), tag], timeout=600)
    return tag


# ----------------------------------------------------------------------------------------- torch index


def _project(wheel: str) -> str:
    """PEP 503 normalised project name of a wheel file."""
    return re.sub(r"[-_.]+", "-", wheel.split("-", 1)[0]).lower()


def torch_index(version: str, lock: Path) -> Path:
    """A package index folder (`<project>/<wheel>`) with torch==`version` (CPU) and its dependencies, at the
    versions of `lock` (pip constraints); kept per torch version and lock content."""
    key = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    root = cache_dir() / f"torch-index-{version}-{key}"
    if (root / ".complete").exists():
        return root
    with tempfile.TemporaryDirectory(prefix="torch-dl-", dir=cache_dir()) as tmp:
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
        download = ["download", "--only-binary=:all:", "-d", tmp, "-c", str(lock), f"torch=={version}"]
        run([*pip, *download], timeout=900)
        if root.exists():
            shutil.rmtree(root)
        for wheel in Path(tmp).glob("*.whl"):
            (root / _project(wheel.name)).mkdir(parents=True, exist_ok=True)
            shutil.move(str(wheel), root / _project(wheel.name) / wheel.name)
    if not list(root.glob("torch/torch-*.whl")):
        raise RuntimeError(f"pip download torch=={version} gave no torch wheel")
    (root / ".complete").touch()
    return root


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_index(folder: Path) -> Iterator[str]:
    """Serve `folder` on loopback (the fixed port when free); yields the index URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", TORCH_INDEX_PORT), handler)
    except OSError:  # taken: any port will do, at the price of BuildKit's cache for the torch layer
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def inductor_cache(client: str, image: str, uid: int) -> Path:
    """A folder for the image's `/data/cache` (inductor's cache), writable by `uid`, kept per image id.

    A rebuilt image starts from an empty cache, so a change to the image is always compiled from scratch once;
    folders of older images are removed.
    """
    image_id = run([client, "image", "inspect", "--format", "{{.Id}}", image]).stdout.strip().split(":")[-1]
    folder = cache_dir() / f"inductor-{image_id[:16]}"
    for old in cache_dir().glob("inductor-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    folder.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        os.chown(folder, uid, uid)
    else:
        folder.chmod(0o777)
    return folder


# ------------------------------------------------------------------------------------------- building


def build(
    client: str,
    dockerfile: str | Path,
    tag: str,
    *,
    target: str | None = None,
    build_args: dict[str, str] | None = None,
    log: Path,
    stdin: str | None = None,
) -> float:
    """`docker build` (BuildKit, host network) from the repository root; returns the seconds it took.

    With `stdin`, that text is the Dockerfile and the build has no context.
    """
    cmd = [client, "build", "--network", "host", "--progress", "plain", "-t", tag]
    if target:
        cmd += ["--target", target]
    for key, value in (build_args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    cmd += ["-"] if stdin is not None else ["-f", str(dockerfile), str(REPO)]
    started = time.monotonic()
    with log.open("w") as out:  # streamed, so that a long build can be followed
        result = subprocess.run(
            cmd,
            input=stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=1500,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )
    if result.returncode != 0:
        raise RuntimeError(f"docker build {tag} failed ({log}):\n{log.read_text(errors='replace')[-6000:]}")
    return time.monotonic() - started
