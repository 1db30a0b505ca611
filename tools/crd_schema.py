"""Cut a CustomResourceDefinition down to the schema our manifests are checked against (tests/deploy/schemas/).

A CRD embeds full copies of Kubernetes' own types (a LeaderWorkerSet holds two PodTemplateSpecs: 600 kB of its
1.3 MB). Those subtrees are replaced by a bare object, because the tests validate them with Kubernetes' own
schema (kubernetes-validate, as a v1 PodTemplate); what is kept is the custom resource's own fields, without
descriptions and without `status`. Run by hand when the pinned operator version changes:

    python tools/crd_schema.py CRD.yaml OUT.json --source 'kubernetes-sigs/lws v0.10.0 <path>' \
        --embedded spec.leaderWorkerTemplate.leaderTemplate.spec ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

EMBEDDED = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def cut(schema: dict[str, Any], embedded: list[str]) -> dict[str, Any]:
    """`schema` without descriptions and `status`, each dotted path in `embedded` replaced by a bare object."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "description"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    out: dict[str, Any] = strip(schema)
    out["properties"].pop("status", None)
    for path in embedded:
        node = out
        *parents, last = path.split(".")
        for key in parents:
            node = node["properties"][key] if key != "[]" else node["items"]
        if last == "[]":
            node["items"] = dict(EMBEDDED)
        else:
            if last not in node["properties"]:
                raise SystemExit(f"{path}: no such field in the CRD")
            node["properties"][last] = dict(EMBEDDED)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", required=True, help="where the CRD came from (recorded in the output)")
    parser.add_argument("--embedded", nargs="+", default=[], help="dotted paths of embedded Kubernetes types")
    args = parser.parse_args()
    crd = yaml.safe_load(args.crd.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    names = crd["spec"]["names"]
    doc = {
        "$comment": f"cut from {args.source} by tools/crd_schema.py; embedded Kubernetes types: {args.embedded}",
        "apiVersion": f"{crd['spec']['group']}/{version['name']}",
        "kind": names["kind"],
        "schema": cut(version["schema"]["openAPIV3Schema"], args.embedded),
    }
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
