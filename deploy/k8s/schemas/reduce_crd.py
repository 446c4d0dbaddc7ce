"""Reduce an upstream KubeRay CRD to the schema checked in beside this script.

    python reduce_crd.py ray.io_rayjobs.yaml > kuberay-v1.2/rayjob-v1.yaml

Takes the ``openAPIV3Schema`` of the CRD's ``v1`` version, drops ``status`` (set by the operator,
never by a manifest) and replaces each subtree that controller-gen inlines from a Kubernetes API
type with ``{x-elided-k8s-type: <definition>}``. tests/test_deploy.py resolves those markers to
the upstream Kubernetes schema of that definition, so the result validates what the full CRD
validates, at a fraction of its size (the three inlined PodSpecs are most of 1.2 MB).
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

MARKER = "x-elided-k8s-type"
CORE = "io.k8s.api.core.v1."
# Property paths of RayClusterSpec ("[]" = array items) -> the Kubernetes type found there.
CLUSTER_SPEC_TYPES = {
    ("autoscalerOptions", "env", "[]"): "EnvVar",
    ("autoscalerOptions", "envFrom", "[]"): "EnvFromSource",
    ("autoscalerOptions", "resources"): "ResourceRequirements",
    ("autoscalerOptions", "securityContext"): "SecurityContext",
    ("autoscalerOptions", "volumeMounts", "[]"): "VolumeMount",
    ("headGroupSpec", "headService", "spec"): "ServiceSpec",
    ("headGroupSpec", "headService", "status"): "ServiceStatus",
    ("headGroupSpec", "template", "spec"): "PodSpec",
    ("workerGroupSpecs", "[]", "template", "spec"): "PodSpec",
}
ELIDED = {
    "RayCluster": {("spec", *path): kind for path, kind in CLUSTER_SPEC_TYPES.items()},
    "RayJob": {
        **{("spec", "rayClusterSpec", *path): kind for path, kind in CLUSTER_SPEC_TYPES.items()},
        ("spec", "submitterPodTemplate", "spec"): "PodSpec",
    },
}


def _node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for step in path:
        schema = schema["items"] if step == "[]" else schema["properties"][step]
    return schema


def reduce_crd(crd: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(kind, reduced v1 openAPIV3Schema) of a CustomResourceDefinition."""
    kind = crd["spec"]["names"]["kind"]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    schema["properties"].pop("status", None)
    for path, k8s_type in ELIDED[kind].items():
        *parent, last = path
        holder = _node(schema, tuple(parent))
        slot = "items" if last == "[]" else None
        if slot:
            holder[slot] = {MARKER: CORE + k8s_type}
        else:
            holder["properties"][last] = {MARKER: CORE + k8s_type}
    return kind, schema


def dump(kind: str, schema: dict[str, Any]) -> str:
    """The checked-in text: a one-line header, then the schema with sorted keys."""
    header = f"# {kind} (ray.io/v1) openAPIV3Schema, reduced by ../reduce_crd.py: see SOURCE.md\n"
    return header + yaml.safe_dump(schema, sort_keys=True, default_flow_style=False, width=100)


def main(path: str) -> None:
    with open(path, encoding="utf-8") as fh:
        (crd,) = [doc for doc in yaml.safe_load_all(fh) if doc]
    sys.stdout.write(dump(*reduce_crd(crd)))


if __name__ == "__main__":
    main(sys.argv[1])
