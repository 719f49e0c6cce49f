"""The deployment configs on a real Ray: `serve run configs/serve.yaml`, Encoder autoscaling, GPU actors.

All of it runs on the session's one Ray cluster (conftest ``ray_session``), next to the session's
``visual_search`` app, which must keep answering: apps here get their own names and route prefixes and are
deleted by name, never with ``serve.shutdown()`` (which `serve run` calls on Ctrl-C, so its process is
killed with SIGKILL instead).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow  # serve run of the full local graph, autoscaling under load: minutes of multi-process work

ROOT = Path(__file__).resolve().parent.parent
# Handles and replicas push autoscaling metrics every 10 s (Ray 2.60 RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S),
# so the look-back window must span a push: with 1 s it often held no data and the Encoder never scaled out.
# target_ongoing_requests 0.5 because one test process's client threads keep only a few requests in flight.
ENCODER_SCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 0.5, "upscale_delay_s": 1,
                   "downscale_delay_s": 3, "look_back_period_s": 15}


def local_config(name: str, route_prefix: str, model: str, index: str) -> dict:
    """configs/serve.yaml with only the app's name, route prefix, model and index changed."""
    config = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    (app,) = config["applications"]
    app.update(name=name, route_prefix=route_prefix)
    app["args"].update(model=model, index=index)
    return config


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def healthz(url: str) -> dict | None:
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def running_replicas(app_name: str, deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return 0
    states = app.deployments[deployment].replica_states
    return sum(n for state, n in states.items() if getattr(state, "value", state) == "RUNNING")


def delete_app(name: str) -> None:
    from ray import serve

    serve.delete(name)
    wait_for(lambda: name not in serve.status().applications, 60, f"app {name} to be deleted")


def test_encoder_scales_out_under_load_and_back_in(ray_session, service, ingested, tiny_model, sample_rows):
    from ray import serve

    from serve_app.preprocess import ClipGeometry
    from serve_app.query_image import prepare_query_image
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    name = "autoscale_check"
    config = local_config(name, "/autoscale-check", tiny_model, ingested[0])
    encoder = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Encoder")
    encoder.pop("num_replicas", None)
    encoder["autoscaling_config"] = ENCODER_SCALING
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))  # what `serve run` calls
    try:
        wait_for(lambda: running_replicas(name, "Encoder") == 1 and app_running(name), 90, "the app to start")
        handle = serve.get_deployment_handle("Encoder", app_name=name)
        photo = prepare_query_image(Path(sample_rows[0]["image"]).read_bytes(), ClipGeometry()).pixels
        # A handle creates its router lazily and not thread-safely: 16 threads making the first call at once
        # each built a router under the same handle id, and the idle ones kept pushing "0 ongoing requests"
        # for it, so the controller often saw no load and never scaled out. One router, built here, first.
        embed_image = handle.embed_pixels
        embed_image.remote(photo).result(timeout_s=30)
        stop, done = threading.Event(), []

        def client(i: int) -> None:
            while not stop.is_set():
                vector = embed_image.remote(photo).result(timeout_s=30)  # a forward: replica-side work
                done.append(len(vector))

        # 16 callers keep ~16 requests in flight: far above target_ongoing_requests=1 however fast the tiny
        # model answers (with 6, a fast replica could average below 1 ongoing request and never scale out).
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
        for t in threads:
            t.start()
        try:
            try:
                wait_for(lambda: running_replicas(name, "Encoder") == 2, 90, "a second Encoder replica under load")
            except AssertionError as e:
                states = serve.status().applications[name].deployments["Encoder"].replica_states
                raise AssertionError(f"{e}; Encoder replica states: {states}; requests answered: {len(done)}") from None
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert done and set(done) == {len(handle.embed_text.remote("x").result(timeout_s=30))}
        wait_for(lambda: running_replicas(name, "Encoder") == 1, 90, "scale-in to one Encoder after the load")
    finally:
        delete_app(name)
    assert healthz(service + "/healthz"), "the session's app must survive"


def test_serve_run_starts_the_full_local_graph_and_answers_healthz(ray_session, service, ingested, served_model,
                                                                  tmp_path):
    from ray import serve

    index, report = ingested
    config = local_config("serve_run_check", "/serve-run-check", served_model, index)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).parent / "serve"
    command = [str(serve_cli), "run", str(path), "--address", ray_session.get_runtime_context().gcs_address]
    log = (tmp_path / "serve-run.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=os.environ | {"RAY_AUTH_MODE": "disabled"},
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        url = service + "/serve-run-check/healthz"
        try:
            body = wait_for(lambda: process.poll() is None and healthz(url), 120, f"{url} to answer 200")
        except AssertionError as e:
            log.flush()
            raise AssertionError(f"{e}; `serve run` said:\n{(tmp_path / 'serve-run.log').read_text()[-3000:]}") from None
        assert body["status"] == "ok" and body["model_id"] == served_model
        assert body["products"] == report.products_in_index and body["index"] == index
        app = serve.status().applications["serve_run_check"]
        assert set(app.deployments) == {d["name"] for d in config["applications"][0]["deployments"]}
        assert all(running_replicas("serve_run_check", name) >= 1 for name in app.deployments)
    finally:
        os.kill(process.pid, signal.SIGKILL)  # never SIGINT: `serve run` would then shut all of Serve down
        process.wait(timeout=30)
        log.close()
    delete_app("serve_run_check")
    assert healthz(service + "/healthz"), "the session's app must survive"


def test_a_model_of_another_dimension_than_the_index_answers_503_naming_both(ray_session, service, ingested,
                                                                          tiny_model, sample_rows):
    """The index was built with the 512-d served model; an app serving the 64-d tiny model over it (what an
    alias switch to a re-embedded version looks like before the Encoder is redeployed) says so on /healthz and
    on every search, as a 503 naming both dimensions, instead of a 500."""
    from ray import serve

    from serve_app.app import build_app

    name, prefix = "mismatch_check", "/mismatch-check"
    serve.run(build_app({"model": tiny_model, "index": ingested[0]}), name=name, route_prefix=prefix,
              blocking=False)
    try:
        base = service + prefix
        wait_for(lambda: app_running(name), 120, "the app to start")
        health = httpx.get(base + "/healthz", timeout=30)
        photo = Path(sample_rows[0]["image"]).read_bytes()
        answers = {
            "healthz": health,
            "text": httpx.post(base + "/search/text", json={"query": "a pineapple", "k": 3}, timeout=60),
            "image": httpx.post(base + "/search/image", files={"file": ("p.png", photo)}, data={"k": "3"},
                                timeout=60),
            "image+text": httpx.post(base + "/search/image", files={"file": ("p.png", photo)},
                                     data={"k": "3", "text": "fruit"}, timeout=60),
        }
        for what, response in answers.items():
            assert response.status_code == 503, (what, response.status_code, response.text)
            error = response.json()["error"]
            assert error["code"] == "model_index_mismatch", (what, error)
            assert "64-d" in error["message"] and "512-d" in error["message"], (what, error)
    finally:
        delete_app(name)
    assert healthz(service + "/healthz"), "the session's app must survive"


def test_a_model_of_another_family_with_the_same_dimension_answers_503_naming_both(ray_session, service, ingested,
                                                                                    served_model, tmp_path_factory):
    """The index was built with the 512-d random CLIP; a 512-d random open_clip ViT-B/32 over it has the same
    dimension, so only the recorded family (and preprocessing) can tell: /healthz and searches say 503."""
    from ray import serve

    from serve_app.app import build_app
    from serve_app.models.random_weights import make_random_model

    other = str(make_random_model(tmp_path_factory.mktemp("models") / "open-clip-base", "open_clip", "base"))
    name, prefix = "family_mismatch_check", "/family-mismatch-check"
    serve.run(build_app({"model": other, "index": ingested[0]}), name=name, route_prefix=prefix, blocking=False)
    try:
        base = service + prefix
        wait_for(lambda: app_running(name), 180, "the app to start")
        answers = {"healthz": httpx.get(base + "/healthz", timeout=30),
                   "text": httpx.post(base + "/search/text", json={"query": "a pineapple", "k": 3}, timeout=60)}
        for what, response in answers.items():
            assert response.status_code == 503, (what, response.status_code, response.text)
            error = response.json()["error"]
            assert error["code"] == "model_index_mismatch", (what, error)
            assert "open_clip" in error["message"] and "clip embeddings" in error["message"], (what, error)
            assert other in error["message"] and served_model in error["message"], (what, error)
    finally:
        delete_app(name)
    body = httpx.get(service + "/healthz", timeout=30).json()
    assert body["family"] == body["index_family"] == "clip" and body["preprocessing"] == body["index_preprocessing"]


def app_running(app_name: str) -> bool:
    from ray import serve

    app = serve.status().applications.get(app_name)
    return app is not None and getattr(app.status, "value", app.status) == "RUNNING"


def test_ingestion_actors_ask_ray_for_the_configured_gpus(ray_session, sample_rows, tiny_model, tmp_path,
                                                         monkeypatch):
    """The session cluster has one logical GPU: the CLIP actor pool asks for it and the run completes (torch
    finds no CUDA on this machine and embeds on CPU)."""
    import ray.data

    from batch_jobs.pipeline import EmbedImagesHere, IngestOptions, ingest

    calls, original = [], ray.data.Dataset.map_batches

    def recording_map_batches(self, fn, *args, **kwargs):
        calls.append((fn, kwargs))
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", recording_map_batches)
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in sample_rows[:4]))
    options = IngestOptions(model=tiny_model, batch_size=4, embed_num_gpus=1, fetch_timeout_s=2.0)
    report = ingest(str(catalog), str(tmp_path / "index"), options)
    embed = [kwargs for fn, kwargs in calls if fn is EmbedImagesHere]  # the CLIP actor pool's callable class
    assert len(embed) == 1 and embed[0]["num_gpus"] == 1
    assert report.indexed == 4 and report.skipped == 0
