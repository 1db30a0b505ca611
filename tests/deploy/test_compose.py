"""docker/compose.yaml: valid against the Compose Specification, and wired the way docs/deploy.md says."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from tests.deploy.kit_manifests import (
    COMPOSE,
    DOCKER,
    REPO,
    duration_s,
    image_config,
    load_compose,
    parse_steer,
    settings_env_names,
)

GPU_SERVICES = ("steer", "train")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target → (source, mode) of the short-syntax volumes."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        out[target] = (source, mode[0] if mode else "rw")
    return out


def test_compose_spec_schema(compose: dict[str, Any]) -> None:
    # The Compose Specification's JSON schema, as vendored (offline) by check-jsonschema.
    jsonschema = pytest.importorskip("jsonschema")
    try:
        schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
        schema = json.loads(schema_file.read_text())
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema not installed (dev dependency; it vendors the compose-spec schema)")
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"steer", "train", "demo"}
    assert "profiles" not in services["steer"], "the server is the default service"
    assert services["train"]["profiles"] == ["train"]
    assert services["demo"]["profiles"] == ["demo"]


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_gpu_reservation(compose: dict[str, Any], name: str) -> None:
    devices = _service(compose, name)["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_builds_point_at_the_dockerfiles(compose: dict[str, Any]) -> None:
    expected = [
        ("steer", "Dockerfile", None),
        ("train", "Dockerfile", None),
        ("demo", "Dockerfile.cpu", "demo"),
    ]
    for name, dockerfile, target in expected:
        build = _service(compose, name)["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO, "the build context is the repository root (pyproject.toml)"
        assert (context / build["dockerfile"]) == DOCKER / dockerfile
        assert build.get("target") == target
    assert "deploy" not in _service(compose, "demo"), "the demo needs no GPU"


def test_server_service(compose: dict[str, Any]) -> None:
    steer = _service(compose, "steer")
    env = steer["environment"]
    assert env["STEER_DEVICE"] == "cuda"
    unknown = {k for k in env if k.startswith("STEER_")} - settings_env_names()
    assert not unknown, f"STEER_* variables the server does not read: {sorted(unknown)}"
    # Credentials pass through from the shell (null value), never with a value in the file.
    assert env["HF_TOKEN"] is None and env["STEER_API_KEY"] is None
    assert steer["restart"] == "unless-stopped"
    # Published on loopback unless the operator says otherwise.
    assert all(p.startswith("127.0.0.1:") and p.endswith(":8000") for p in steer["ports"])
    mounts = _mounts(steer)
    assert mounts["/data/catalog"] == ("catalog", "ro") and env["STEER_VECTORS"] == "/data/catalog"
    assert mounts["/data/hf"][0] == "hf-cache"
    assert set(compose["volumes"]) == {"catalog", "hf-cache"}


@pytest.mark.parametrize("name", ["steer", "demo"])
def test_healthcheck_and_shutdown(compose: dict[str, Any], name: str) -> None:
    from tests.deploy.kit_manifests import drain_timeout_s

    service = _service(compose, name)
    assert service["healthcheck"]["test"] == ["CMD", "steer-healthcheck", "/ready"]
    assert service["init"] is True
    # B4/R13: SIGKILL only after the server's drain timeout plus a margin.
    assert duration_s(service["stop_grace_period"]) >= drain_timeout_s() + 10


def test_train_job_shares_the_catalog(compose: dict[str, Any]) -> None:
    train, steer = _service(compose, "train"), _service(compose, "steer")
    assert train["restart"] == "no" and "ports" not in train
    entry = train["entrypoint"]
    assert entry[:2] == ["steer", "train"]
    flags = dict(arg[2:].split("=", 1) for arg in entry[2:])
    assert flags["model"] == steer["environment"]["STEER_MODEL"]
    assert flags["sae"] == steer["environment"]["STEER_SAE"]
    mounts = _mounts(train)
    # Same named volume as the server, writable here, at the path --out names.
    assert mounts[flags["out"]] == ("catalog", "rw")
    # Training logs persist beside the vectors, in a dot-directory the catalog scan skips.
    assert flags["log-dir"].startswith(flags["out"] + "/.")
    assert mounts["/data/hf"] == _mounts(steer)["/data/hf"]
    assert train["environment"] == {"HF_TOKEN": None}
    # What docs/deploy.md appends to `run --rm train` completes a valid `steer train` command line.
    args = parse_steer(
        [*entry[1:], "--method", "yapo", "--data", "/data/train/x.jsonl", "--name", "culture/x"]
    )
    assert (args.model, args.out, args.layer) == (flags["model"], "/data/catalog", 15)
    # Trains on the reserved GPU in the server's precision, not on the CPU in float32.
    env = steer["environment"]
    assert (args.device, args.dtype) == ("cuda", "bfloat16") == (env["STEER_DEVICE"], env["STEER_DTYPE"])


def test_mount_points_match_the_image() -> None:
    image = image_config(DOCKER / "Dockerfile")
    assert image.env["STEER_VECTORS"] == "/data/catalog" and image.env["HF_HOME"] == "/data/hf"
