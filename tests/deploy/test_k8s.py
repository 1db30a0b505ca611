"""docker/k8s: schema-valid (kubernetes-validate, offline) and consistent with the image and the server."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kit_manifests import (
    DOCKERFILES,
    K8S,
    RUNTIME_UID,
    drain_timeout_s,
    env_of,
    image_config,
    k8s_docs,
    k8s_manifests,
    k8s_objects,
    parse_steer,
    settings_env_names,
)

# The oldest Kubernetes the manifests claim (the native preStop `sleep` action needs 1.30) and the newest
# schema kubernetes-validate bundles today.
K8S_VERSIONS = ("1.30.0", "1.37.0")


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return k8s_objects()


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(obj)["containers"]
    return container


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", k8s_manifests(), ids=lambda p: p.name)
def test_manifest_schema(path: Path, version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="dev dependency kubernetes-validate")
    for doc in k8s_docs(path):
        doc = copy.deepcopy(doc)
        meta = doc["metadata"]
        # One-off Jobs use generateName; the validator insists on a name, which the API server would assign.
        meta.setdefault("name", meta.get("generateName", "") + "x")
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{meta['name']} @ {version}: {exc}")


def test_kustomization_lists_the_long_lived_resources() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    names = {p.name for p in k8s_manifests()}
    assert set(kustomization["resources"]) <= names
    # Jobs are one-offs (`kubectl create -f`), the HPA is opt-in; everything else is applied with -k.
    assert set(kustomization["resources"]) == names - {"prefetch-job.yaml", "train-job.yaml", "hpa.yaml"}
    (image,) = kustomization["images"]
    assert f"{image['newName']}:{image['newTag']}" == "sparse-steer:gpu"


def test_deployment_gpu_probes_and_drain(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = objects[("Deployment", "steer")]
    pod, container = _pod(deployment), _container(deployment)
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(resources["requests"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    readiness = container["readinessProbe"]
    # httpGet works only while /ready is open; the exec probe also carries STEER_API_KEY.
    assert readiness.get("httpGet") == {"path": "/ready", "port": "http"} or readiness["exec"]["command"] == [
        "steer-healthcheck",
        "/ready",
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    env = env_of(container)
    assert ports["http"] == int(env["STEER_PORT"]) == 8000
    # The pod must outlive preStop + the server's drain, or SIGKILL cuts in-flight generations.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain_timeout_s() + 10


def test_deployment_configuration(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = objects[("Deployment", "steer")]
    container = _container(deployment)
    env = env_of(container)
    unknown = {k for k in env if k.startswith("STEER_")} - settings_env_names()
    assert not unknown, f"STEER_* variables the server does not read: {sorted(unknown)}"
    image_env = image_config(DOCKERFILES["gpu"]).env
    for key in ("STEER_MODEL", "STEER_SAE", "STEER_VECTORS", "STEER_HOST", "HF_HOME"):
        assert env[key] == image_env[key], f"{key}: manifest and image disagree"
    assert env["HF_HUB_OFFLINE"] == "1", "replicas read the prefetched cache, never the hub"
    assert env["STEER_API_KEY"] == "<secret>" and "HF_TOKEN" not in env
    assert "command" not in container and "args" not in container, "the image's `steer serve` runs as is"


def test_pods_run_as_the_image_user(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    for (kind, name), obj in objects.items():
        if kind not in ("Deployment", "Job"):
            continue
        security = _pod(obj)["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] == security["fsGroup"] == RUNTIME_UID, name
        container = _container(obj)
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["image"] == "sparse-steer:gpu", name


def test_shared_catalog(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    claims = {name for kind, name in objects if kind == "PersistentVolumeClaim"}
    for claim in claims:
        assert objects[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]

    def catalog_mount(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        volumes = {v["name"]: v for v in _pod(obj)["volumes"]}
        (mount,) = [m for m in _container(obj)["volumeMounts"] if m["mountPath"] == "/data/catalog"]
        return volumes[mount["name"]]["persistentVolumeClaim"]["claimName"], mount

    deployment = objects[("Deployment", "steer")]
    served_claim, served = catalog_mount(deployment)
    assert served_claim in claims and served["readOnly"] is True
    train = objects[("Job", "steer-train-")]
    trained_claim, written = catalog_mount(train)
    assert trained_claim == served_claim and not written.get("readOnly")
    args = dict(a[2:].split("=", 1) for a in _container(train)["args"][1:])
    assert _container(train)["args"][0] == "train" and args["out"] == "/data/catalog"
    assert args["log-dir"].startswith(args["out"] + "/.")
    parsed = parse_steer(_container(train)["args"])  # the image's ENTRYPOINT is `steer`
    assert (parsed.method, parsed.name) == ("yapo", "culture/morocco")
    assert (parsed.device, parsed.dtype) == ("cuda", "bfloat16"), "the train Job trains on its GPU"
    serve_env = env_of(_container(deployment))
    assert (args["model"], args["sae"]) == (serve_env["STEER_MODEL"], serve_env["STEER_SAE"])
    prefetch_env = env_of(_container(objects[("Job", "steer-prefetch-")]))
    assert (prefetch_env["STEER_MODEL"], prefetch_env["STEER_SAE"]) == (args["model"], args["sae"])


def test_service_and_hpa_target_the_deployment(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = objects[("Deployment", "steer")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "steer")]
    assert service["spec"]["selector"].items() <= labels.items()
    assert "sessionAffinity" not in service["spec"], "replicas are stateless"
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
    hpa = objects[("HorizontalPodAutoscaler", "steer")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "steer"}
    # The metric the HPA scales on is one the server exports.
    from server.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    for metric in hpa["spec"]["metrics"]:
        assert metric["pods"]["metric"]["name"] in exported
