"""docker/k8s: schema-valid (kubernetes-validate, offline) and consistent with the image and the server."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kit_manifests import (
    DOCKER,
    DOCKERFILES,
    K8S,
    REPO,
    RUNTIME_UID,
    build_args,
    crd_schemas,
    drain_timeout_s,
    env_of,
    image_config,
    k8s_docs,
    k8s_manifests,
    k8s_objects,
    parse_dockerfile,
    parse_steer,
    pod_templates,
    settings_env_names,
    strict_schema,
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
    """Kubernetes' own kinds against its schema; a custom resource (LeaderWorkerSet) against its operator's CRD,
    refusing unknown fields, and the pod templates inside it against Kubernetes' PodTemplate schema."""
    kv = pytest.importorskip("kubernetes_validate", reason="dev dependency kubernetes-validate")
    custom = crd_schemas()
    for doc in k8s_docs(path):
        doc = copy.deepcopy(doc)
        meta = doc["metadata"]
        # One-off Jobs use generateName; the validator insists on a name, which the API server would assign.
        meta.setdefault("name", meta.get("generateName", "") + "x")
        schema = custom.get((doc["apiVersion"], doc["kind"]))
        if schema is None:
            checked = [(doc["kind"], doc)]
        else:
            import jsonschema

            errors = sorted(jsonschema.Draft7Validator(strict_schema(schema)).iter_errors(doc), key=str)
            assert not errors, (
                f"{path.name} {doc['kind']}/{meta['name']}: {errors[0].message} at {errors[0].path}"
            )
            checked = [
                (
                    f"{doc['kind']} {role}",
                    {"apiVersion": "v1", "kind": "PodTemplate", "metadata": meta, "template": t},
                )
                for role, t in pod_templates(doc).items()
            ]
            assert checked, f"{doc['kind']} without pod templates"
        for what, obj in checked:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{path.name} {what}/{meta['name']} @ {version}: {exc}")


def test_custom_resource_schema_refuses_unknown_fields() -> None:
    """The CRD check is strict: a misspelt field of the LeaderWorkerSet is an error, not silently dropped."""
    import jsonschema

    lws = copy.deepcopy(k8s_objects()[("LeaderWorkerSet", "steer-vllm")])
    schema = strict_schema(crd_schemas()[(lws["apiVersion"], lws["kind"])])
    jsonschema.validate(lws, schema)
    lws["spec"]["leaderWorkerTemplate"]["groupSize"] = 2
    with pytest.raises(jsonschema.ValidationError, match="groupSize"):
        jsonschema.validate(lws, schema)


def test_kustomization_lists_the_long_lived_resources() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    names = {p.name for p in k8s_manifests()}
    assert set(kustomization["resources"]) <= names
    # Jobs are one-offs (`kubectl create -f`), the HPA is opt-in; everything else is applied with -k.
    # the multi-node recipe needs the LeaderWorkerSet operator: opt-in too.
    opt_in = {"prefetch-job.yaml", "train-job.yaml", "hpa.yaml", "vllm-lws.yaml"}
    assert set(kustomization["resources"]) == names - opt_in
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
    images = {
        "Deployment": "sparse-steer:gpu",
        "Job": "sparse-steer:gpu",
        "LeaderWorkerSet": "sparse-steer:gpu-vllm",
    }
    for (kind, name), obj in objects.items():
        for role, template in pod_templates(obj).items():
            pod = template["spec"]
            security = pod["securityContext"]
            assert security["runAsNonRoot"] is True, (name, role)
            assert security["runAsUser"] == security["fsGroup"] == RUNTIME_UID, (name, role)
            (container,) = pod["containers"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, (name, role)
            assert container["image"] == images[kind], (name, role)


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


# --------------------------------------------------------------------- vLLM over Ray: docker/k8s/vllm-lws.yaml


def _lws(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The LeaderWorkerSet, its leader container and its worker container."""
    lws = objects[("LeaderWorkerSet", "steer-vllm")]
    templates = pod_templates(lws)
    (leader,) = templates["leader"]["spec"]["containers"]
    (worker,) = templates["worker"]["spec"]["containers"]
    return lws, leader, worker


def _shell(container: dict[str, Any]) -> str:
    """The script of a `/bin/sh -c SCRIPT` container."""
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    return str(script)


def test_vllm_lws_settings_are_the_servers(
    objects: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's STEER_* variables are settings the server reads, with values it accepts: the vLLM backend on a
    Ray executor, one pipeline stage of tensor-parallel GPUs per pod of the group."""
    from server.settings import ServerSettings

    lws, leader, worker = _lws(objects)
    env = env_of(leader)
    unknown = {k for k in env if k.startswith("STEER_")} - settings_env_names()
    assert not unknown, f"STEER_* variables the server does not read: {sorted(unknown)}"
    for key, value in env.items():
        if key.startswith("STEER_") and value != "<secret>":
            monkeypatch.setenv(key, value)
    settings = ServerSettings()
    assert (settings.backend, settings.vllm_distributed_executor) == ("vllm", "ray")
    size = lws["spec"]["leaderWorkerTemplate"]["size"]
    gpus = {c["resources"]["limits"]["nvidia.com/gpu"] for c in (leader, worker)}
    assert gpus == {settings.vllm_tensor_parallel_size}, "one pipeline stage of tensor-parallel GPUs per pod"
    assert settings.vllm_pipeline_parallel_size == size, "a pipeline stage per pod of the group"
    for c in (leader, worker):
        assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
    image_env = image_config(DOCKERFILES["gpu"]).env
    for key in ("STEER_VECTORS", "STEER_HOST", "STEER_PORT", "HF_HOME"):
        assert env[key] == image_env[key], f"{key}: manifest and image disagree"
    assert env["HF_HUB_OFFLINE"] == env_of(worker)["HF_HUB_OFFLINE"] == "1"
    assert env_of(worker)["HF_HOME"] == env["HF_HOME"], (
        "the workers read the model shards from the same cache"
    )


def test_vllm_lws_ray_head_and_workers(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The leader starts the Ray head, then `steer serve` as the shell's replacement (so SIGTERM reaches the
    server and drains); the workers block in `ray start` at the leader's address and Ray port."""
    _, leader, worker = _lws(objects)
    head, _, serve = _shell(leader).partition(" && exec ")
    port = {p["name"]: p["containerPort"] for p in leader["ports"]}
    assert head.startswith("ray start --head ") and f"--port={port['ray-gcs']}" in head.split()
    parse_steer(serve.split()[1:])  # the real CLI accepts it
    assert serve.split()[:2] == ["steer", "serve"]
    script = _shell(worker)
    assert script.startswith("exec ray start --block ")
    assert f'--address="${{LWS_LEADER_ADDRESS}}:{port["ray-gcs"]}"' in script.split()
    assert port["http"] == int(env_of(leader)["STEER_PORT"])


def test_vllm_lws_probes_drain_and_shared_memory(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    lws, leader, _ = _lws(objects)
    assert leader["readinessProbe"]["exec"]["command"] == ["steer-healthcheck", "/ready"]
    assert leader["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert leader["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    leader_pod = pod_templates(lws)["leader"]["spec"]
    pre_stop = leader["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert leader_pod["terminationGracePeriodSeconds"] >= pre_stop + drain_timeout_s() + 10
    assert lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    for role, template in pod_templates(lws).items():
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory", role


def test_vllm_lws_every_pod_reads_the_same_catalog_and_cache(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Each Ray worker loads the SAE and the vectors itself, from the paths the leader's layout names."""
    lws, leader, _ = _lws(objects)
    claims = {name for kind, name in objects if kind == "PersistentVolumeClaim"}
    env = env_of(leader)
    for role, template in pod_templates(lws).items():
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for path in (env["STEER_VECTORS"], env["HF_HOME"]):
            mount = mounts[path]
            assert mount["readOnly"] is True, (role, path)
            assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] in claims, (role, path)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True and "/tmp" in mounts, role


def test_vllm_lws_service_and_image(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The Service reaches the group's leader; the image is the GPU image plus the `vllm` extra's pinned vLLM."""
    import tomllib

    lws, leader, _ = _lws(objects)
    service = objects[("Service", "steer-vllm")]
    selector = service["spec"]["selector"]
    assert selector["leaderworkerset.sigs.k8s.io/name"] == lws["metadata"]["name"]
    assert selector["leaderworkerset.sigs.k8s.io/worker-index"] == "0", "the leader serves the API"
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in leader["ports"]}
    dockerfile = DOCKER / "Dockerfile.vllm"
    (stage,) = parse_dockerfile(dockerfile)[1]
    assert stage.base == "sparse-steer:gpu"
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"]
    assert extra == [f"vllm=={build_args(dockerfile)['VLLM_VERSION']}"]
    assert image_config(dockerfile).env["STEER_BACKEND"] == "vllm"
