"""Every Serve and ingestion config in configs/, checked against what the code actually defines.

Ray's ``ServeDeploySchema`` accepts unknown keys (a misspelled ``autoscaling_confg`` or a ``user_config`` key
that ``reconfigure`` never reads pass it), so each config is also compared key by key with Ray's own schema
classes, with the deployments that ``build_app`` binds and with their default ``user_config`` (the keys their
``reconfigure`` reads). Ingestion configs are checked against ``IngestOptions`` and through the real CLI,
and the RayJob's entrypoint through the real argument parser.
"""

import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIGS = sorted((ROOT / "configs").glob("serve*.yaml"))
INGEST_CONFIGS = sorted((ROOT / "configs").glob("ingest*.yaml"))
IMAGE_APP_DIR = "/home/ray/app/"  # where the Dockerfile puts configs/


def fields(model) -> set[str]:
    return set(model.model_fields)


def built_deployments(import_path: str, args: dict) -> dict:
    """``{deployment name: Deployment}`` of the application that ``import_path`` builds from ``args``, the
    way ``serve run`` and the Serve controller build it (binding only: no model is loaded)."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    app = call_user_app_builder_with_args_if_necessary(import_attr(import_path), args)
    return {d.name: d for d in build_app(app, name="check").deployments}


def config_problems(config: dict, model: str) -> list[str]:
    """Keys of a Serve config that Ray or the app would not use, as readable lines (empty when clean)."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (DeploymentSchema, HTTPOptionsSchema, RayActorOptionsSchema,
                                  ServeApplicationSchema, ServeDeploySchema)

    problems = [f"top-level key {k!r}" for k in set(config) - fields(ServeDeploySchema)]
    problems += [f"http_options key {k!r}" for k in set(config.get("http_options", {})) - fields(HTTPOptionsSchema)]
    for app in config["applications"]:
        problems += [f"app key {k!r}" for k in set(app) - fields(ServeApplicationSchema)]
        deployments = built_deployments(app["import_path"], dict(app.get("args") or {}) | {"model": model})
        for dep in app.get("deployments", []):
            name = dep["name"]
            if name not in deployments:
                problems.append(f"deployment {name!r} is not in the app (it has {sorted(deployments)})")
                continue
            problems += [f"{name}: key {k!r}" for k in set(dep) - fields(DeploymentSchema)]
            problems += [f"{name}: autoscaling_config key {k!r}"
                         for k in set(dep.get("autoscaling_config") or {}) - fields(AutoscalingConfig)]
            problems += [f"{name}: ray_actor_options key {k!r}"
                         for k in set(dep.get("ray_actor_options") or {}) - fields(RayActorOptionsSchema)]
            declared = deployments[name].user_config
            if "user_config" in dep and (declared is None or not hasattr(deployments[name].func_or_class,
                                                                          "reconfigure")):
                problems.append(f"{name}: has no reconfigure(), so user_config would be an error")
            elif "user_config" in dep:
                problems += [f"{name}: user_config key {k!r} (reconfigure reads {sorted(declared)})"
                             for k in set(dep["user_config"]) - set(declared)]
    return problems


@pytest.fixture(scope="module", params=[p.name for p in SERVE_CONFIGS])
def serve_config(request) -> dict:
    return yaml.safe_load((ROOT / "configs" / request.param).read_text())


def test_serve_config_passes_rays_schema_and_matches_the_apps_deployments(serve_config, tiny_model):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)
    assert config_problems(serve_config, tiny_model) == []
    for app in serve_config["applications"]:
        configured = {d["name"] for d in app["deployments"]}
        built = built_deployments(app["import_path"], app["args"] | {"model": tiny_model})
        assert configured == set(built), "every deployment's resources are set in the config"


def test_the_key_check_catches_what_rays_schema_lets_through(tiny_model):
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    encoder = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Encoder")
    decoder = next(d for d in config["applications"][0]["deployments"] if d["name"] == "VideoDecoder")
    decoder["autoscaling_confg"] = decoder.pop("autoscaling_config")
    encoder["user_config"]["max_batch"] = 8
    config["applications"][0]["deployments"].append({"name": "Encodr", "num_replicas": 1})
    retriever = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Retriever")
    retriever["user_config"] = {"k": 1}
    ServeDeploySchema.model_validate(config)  # Ray alone accepts all of this
    problems = "\n".join(config_problems(config, tiny_model))
    assert "VideoDecoder: key 'autoscaling_confg'" in problems
    assert "Encoder: user_config key 'max_batch' (reconfigure reads ['batch_wait_timeout_s', 'max_batch_size'])" in problems
    assert "deployment 'Encodr' is not in the app" in problems
    assert "Retriever: has no reconfigure()" in problems


def test_declared_user_config_keys_are_the_ones_reconfigure_reads(tiny_model):
    import inspect

    for name, dep in built_deployments("serve_app.app:build_app", {"model": tiny_model}).items():
        if dep.user_config is not None:
            source = inspect.getsource(dep.func_or_class.reconfigure)
            assert all(f'"{key}"' in source for key in dep.user_config), name


def test_app_args_are_validated_and_unknown_ones_listed(serve_config):
    from serve_app.app import build_app
    from serve_app.config import AppArgs

    for app in serve_config["applications"]:
        AppArgs.from_args(app["args"])
        with pytest.raises(ValueError, match=r"unknown app args \['modle'\]; valid args are \[.*'model'"):
            build_app(app["args"] | {"modle": "x"})


def test_production_serve_config_fits_the_rayservice_cluster():
    prod = yaml.safe_load((ROOT / "configs" / "serve.prod.yaml").read_text())
    service = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    assert prod["http_options"] == {"host": "0.0.0.0", "port": 8000}
    (app,) = prod["applications"]
    deps = {d["name"]: d for d in app["deployments"]}
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu_pod = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    encoder = deps["Encoder"]
    assert encoder["ray_actor_options"]["num_gpus"] == 1 == int(gpu_pod["nvidia.com/gpu"])
    assert encoder["ray_actor_options"]["num_cpus"] == float(groups["gpu"]["rayStartParams"]["num-cpus"])
    assert encoder["autoscaling_config"]["max_replicas"] <= groups["gpu"]["maxReplicas"]
    assert app["args"]["encoder_threads"] == encoder["ray_actor_options"]["num_cpus"]
    cpu_per_pod = float(groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])

    def cpus(bound: str) -> float:
        total = 0.0
        for dep in deps.values():
            if "num_gpus" in dep["ray_actor_options"]:
                continue
            scaling = dep.get("autoscaling_config")
            replicas = scaling[bound] if scaling else dep["num_replicas"]
            total += replicas * dep["ray_actor_options"]["num_cpus"]
            assert dep["ray_actor_options"]["num_cpus"] <= cpu_per_pod, dep["name"]
        return total

    assert cpus("min_replicas") <= groups["cpu"]["minReplicas"] * cpu_per_pod
    assert cpus("max_replicas") <= groups["cpu"]["maxReplicas"] * cpu_per_pod
    for dep in deps.values():
        scaling = dep.get("autoscaling_config")
        if scaling:
            assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"], dep["name"]
            assert scaling["target_ongoing_requests"] <= dep["max_ongoing_requests"], dep["name"]


@pytest.fixture(scope="module", params=[p.name for p in INGEST_CONFIGS])
def ingest_config(request) -> Path:
    return ROOT / "configs" / request.param


def test_ingest_config_keys_are_ingest_options(ingest_config, tiny_model):
    import dataclasses

    from batch_jobs.cli import build_parser, ingest_options
    from batch_jobs.pipeline import IngestOptions

    config = yaml.safe_load(ingest_config.read_text())
    assert set(config) <= {f.name for f in dataclasses.fields(IngestOptions)} - {"model"}
    args = build_parser().parse_args(["ingest", "--catalog", "x.jsonl", "--model", tiny_model,
                                      "--config", str(ingest_config)])
    options = ingest_options(args)
    assert {k: getattr(options, k) for k in config} == config


def test_an_unknown_ingest_key_is_an_error_listing_the_valid_ones(tmp_path, tiny_model):
    from batch_jobs.cli import build_parser, ingest_options

    bad = tmp_path / "ingest.yaml"
    bad.write_text("embed_num_gpu: 1\n")
    args = build_parser().parse_args(["ingest", "--catalog", "x.jsonl", "--model", tiny_model, "--config", str(bad)])
    with pytest.raises(SystemExit, match=r"unknown keys \['embed_num_gpu'\].*valid keys: \[.*'embed_num_gpus'"):
        ingest_options(args)


def test_the_rayjob_runs_the_real_cli_with_the_production_config_and_the_services_index():
    from batch_jobs.cli import build_parser

    job = yaml.safe_load((ROOT / "k8s" / "rayjob-ingest.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "batch_jobs"]
    args = build_parser().parse_args(argv[3:])
    assert args.func.__name__ == "cmd_ingest" and args.catalog.startswith("s3://")
    assert args.config.startswith(IMAGE_APP_DIR)
    config_file = ROOT / args.config.removeprefix(IMAGE_APP_DIR)
    assert config_file == ROOT / "configs" / "ingest.prod.yaml" and config_file.is_file()
    prod_args = yaml.safe_load((ROOT / "configs" / "serve.prod.yaml").read_text())["applications"][0]["args"]
    assert args.index == prod_args["index"] and args.model == prod_args["model"]
    ingest = yaml.safe_load(config_file.read_text())
    assert ingest["dtype"] == prod_args["dtype"], "catalog and query vectors must come from the same dtype"
    gpu = next(g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    gpu_limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert ingest["embed_actors"] * ingest["embed_num_gpus"] <= gpu["replicas"] * int(gpu_limits["nvidia.com/gpu"])
    for manifest in ("rayjob-ingest.yaml", "rayservice.yaml"):
        text = yaml.safe_load((ROOT / "k8s" / manifest).read_text())
        spec = text["spec"].get("rayClusterSpec") or text["spec"]["rayClusterConfig"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            mounts = [m["mountPath"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]]
            assert any(Path(args.model).is_relative_to(m) for m in mounts), f"{manifest}: model not mounted"


def test_cli_stdout_carries_only_the_result_json(tmp_path, capsys, monkeypatch):
    """Anything printed while a command runs (Ray's raylet warns about worker processes on the driver's stdout)
    goes to stderr, so ``python -m batch_jobs … | jq`` parses."""
    import json

    from batch_jobs import cli

    def noisy(args):
        print("8 PYTHON worker processes have been started on node ...")
        cli.emit(json.dumps({"ok": True}))
        return 0

    monkeypatch.setattr(cli, "cmd_make_random_clip", noisy)  # build_parser binds the command when main runs
    assert cli.main(["make-random-clip", str(tmp_path / "m")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"ok": True}
    assert "PYTHON worker processes" in out.err and "PYTHON" not in out.out


def test_a_ray_the_command_started_is_stopped_before_stdout_is_given_back(tmp_path, capsys, monkeypatch):
    """Ray prints its deduplicated log lines ("[repeated 3x across cluster]") when it shuts down: main() stops
    the Ray its command started while stdout still goes to stderr, and leaves a Ray it found running alone."""
    import json
    import types

    from batch_jobs import cli

    state = {"on": False, "shutdowns": 0}

    def shutdown():
        print("(raylet) WARNING: 14 PYTHON worker processes ... [repeated 3x across cluster]")
        state["on"], state["shutdowns"] = False, state["shutdowns"] + 1

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: state["on"],
                                                                  shutdown=shutdown))

    def starts_ray(args):
        state["on"] = True
        cli.emit(json.dumps({"ok": True}))
        return 0

    monkeypatch.setattr(cli, "cmd_make_random_clip", starts_ray)
    assert cli.main(["make-random-clip", str(tmp_path / "m")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"ok": True} and "repeated 3x" in out.err and state["shutdowns"] == 1
    state["on"] = True  # a Ray already up when the command starts (a cluster, a test session): not ours to stop
    assert cli.main(["make-random-clip", str(tmp_path / "m")]) == 0
    assert state == {"on": True, "shutdowns": 1}
