"""Helpers for the deployment tests: read Dockerfiles, compose and manifests the way the tools would.

No Docker engine runs here, so the tests check what each file *says*: a small Dockerfile reader (stages,
inherited ENV, ENTRYPOINT/CMD), compose interpolation of `${VAR:-default}`, and `.dockerignore` matching.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
COMPOSE = DOCKER / "compose.yaml"

# The UID the images run as; manifests and compose must agree with the Dockerfiles.
RUNTIME_UID = 10001


def makefile_var(name: str) -> str:
    """`NAME ?= value` (or `:=`/`=`) from the Makefile."""
    match = re.search(rf"^{name}\s*[?:]?=\s*(\S+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, f"{name} not found in Makefile"
    return match.group(1)


# --------------------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    """One build stage: its base and what it sets. ENV/ENTRYPOINT/CMD/... are inherited from a base stage."""

    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Image:
    """The effective configuration of a stage, as `docker inspect` would show it."""

    env: dict[str, str]
    entrypoint: list[str] | None
    cmd: list[str] | None
    user: str | None
    expose: list[str]
    healthcheck: str | None

    @property
    def command_line(self) -> list[str]:
        return [*(self.entrypoint or []), *(self.cmd or [])]


def _logical_lines(text: str) -> Iterator[str]:
    """Join backslash continuations; drop comments and blank lines (comments may sit inside a continuation)."""
    buf: list[str] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        yield " ".join(part for part in buf if part)
        buf = []
    if buf:
        yield " ".join(buf)


def _expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name=name, base=_expand(words[0], global_args)))
        elif not stages:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"not exec form: {rest}"
    return [str(v) for v in value]


def _env_pairs(rest: str) -> dict[str, str]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def image_config(path: Path, target: str | None = None) -> Image:
    """Effective config of `target` (default: the last stage), following `FROM <earlier stage>`."""
    _, stages = parse_dockerfile(path)
    by_name = {s.name: s for s in stages if s.name}
    stage = by_name[target] if target else stages[-1]
    chain = [stage]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    image = Image(env={}, entrypoint=None, cmd=None, user=None, expose=[], healthcheck=None)
    for st in reversed(chain):
        for keyword, rest in st.instructions:
            if keyword == "ENV":
                image.env.update({k: _expand(v, image.env) for k, v in _env_pairs(rest).items()})
            elif keyword == "ENTRYPOINT":
                image.entrypoint, image.cmd = _exec_form(rest), None  # as Docker does: ENTRYPOINT resets CMD
            elif keyword == "CMD":
                image.cmd = _exec_form(rest)
            elif keyword == "USER":
                image.user = rest
            elif keyword == "EXPOSE":
                image.expose += rest.split()
            elif keyword == "HEALTHCHECK":
                image.healthcheck = rest
    return image


def build_args(path: Path) -> dict[str, str]:
    """Every ARG with its default, global or per stage."""
    global_args, stages = parse_dockerfile(path)
    out = dict(global_args)
    for st in stages:
        for keyword, rest in st.instructions:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                out[key] = default
    return out


def context_copies(path: Path) -> list[str]:
    """Sources that COPY/ADD take from the build context (not `--from=` another stage)."""
    sources: list[str] = []
    for st in parse_dockerfile(path)[1]:
        for keyword, rest in st.instructions:
            if keyword not in ("COPY", "ADD"):
                continue
            words = shlex.split(rest)
            if any(w.startswith("--from") for w in words):
                continue
            sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


# ----------------------------------------------------------------------------------- .dockerignore


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching: `*` and `?` stay within one path segment, `**` spans any number of them."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + "$")


def dockerignore_excludes(rel_path: str, patterns: list[str]) -> bool:
    """Whether `rel_path` is left out of the build context: the last matching rule wins, and a rule
    that matches a directory covers everything below it."""
    parts = rel_path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _ignore_regex((pattern[1:] if negate else pattern).strip("/"))
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# ------------------------------------------------------------------------------------------ compose

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(node: Any, env: dict[str, str] | None = None) -> Any:
    """Compose-style `${VAR}` / `${VAR:-default}` substitution, with an empty environment by default."""
    env = env or {}
    if isinstance(node, str):
        return _INTERPOLATION.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), node)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def load_compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


# --------------------------------------------------------------------------------------- Kubernetes


def k8s_manifests() -> list[Path]:
    """Every Kubernetes resource file (kustomization.yaml is kustomize's config, not a resource)."""
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name or generateName) → object, across all manifests."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in k8s_manifests():
        for doc in k8s_docs(path):
            meta = doc["metadata"]
            out[(doc["kind"], meta.get("name") or meta["generateName"])] = doc
    return out


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """Literal `env` values of a container (secret references map to '<secret>')."""
    return {e["name"]: e.get("value", "<secret>") for e in container.get("env", [])}


def settings_env_names() -> set[str]:
    """The STEER_* variables the server reads, from its pydantic-settings class."""
    from server.settings import ServerSettings

    prefix = ServerSettings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in ServerSettings.model_fields}


def parse_steer(argv: list[str]) -> Any:
    """Parse a `steer ...` argument list with the real CLI parser (SystemExit on a bad flag)."""
    from steer_cli import build_parser

    return build_parser().parse_args(argv)


def drain_timeout_s() -> float:
    from server.settings import ServerSettings

    return float(ServerSettings.model_fields["drain_timeout_s"].default)


def duration_s(value: str | int) -> float:
    """Compose durations: '45s', '1m30s', '2m', '15m' (or a bare number of seconds)."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts, f"unreadable duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------------------- custom resources (CRDs)

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → the custom resource's own schema, cut from the operator's CRD (tools/crd_schema.py)."""
    out = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        doc = json.loads(path.read_text())
        out[(doc["apiVersion"], doc["kind"])] = doc["schema"]
    return out


def strict_schema(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields (`kubectl apply --validate=strict`): every object with declared
    properties gets `additionalProperties: false`, unless it keeps unknown fields on purpose."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


def pod_templates(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod templates a workload holds, by role: `template` of a Deployment or Job, `leaderTemplate` and
    `workerTemplate` of a LeaderWorkerSet."""
    spec = doc["spec"]
    if doc["kind"] == "LeaderWorkerSet":
        lws = spec["leaderWorkerTemplate"]
        return {role: lws[f"{role}Template"] for role in ("leader", "worker") if f"{role}Template" in lws}
    return {"pod": spec["template"]} if "template" in spec else {}
