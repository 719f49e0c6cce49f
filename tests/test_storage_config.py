"""Object storage (local, HTTP, S3 on moto's real HTTP server), app args and the CLI."""

import json
import subprocess
import sys

import pytest

from serve_app import storage
from tests.conftest import free_port


@pytest.fixture(scope="module")
def s3():
    """A bucket on moto's real S3 HTTP server on 127.0.0.1, with boto3 pointed at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "VS_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            mp.setenv(key, value)
        storage.s3_client.cache_clear()
        storage.s3_client().create_bucket(Bucket="shop")
        yield "s3://shop"
    storage.s3_client.cache_clear()
    server.stop()


def test_s3_round_trip_and_errors(s3):
    storage.write_bytes(f"{s3}/catalog/a.bin", b"hello")
    assert storage.read_bytes(f"{s3}/catalog/a.bin") == b"hello"
    with pytest.raises(storage.ObjectNotFound):
        storage.read_bytes(f"{s3}/catalog/missing.bin")
    with pytest.raises(storage.ObjectTooLarge):
        storage.read_bytes(f"{s3}/catalog/a.bin", max_bytes=3)
    assert storage.join(f"{s3}/catalog/manifest.jsonl", "imgs/1.png") == f"{s3}/catalog/imgs/1.png"


def test_local_and_http_reads(tmp_path, image_host):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    assert storage.read_bytes(str(path)) == b"abc" and storage.read_bytes(f"file://{path}") == b"abc"
    with pytest.raises(storage.ObjectNotFound):
        storage.read_bytes(str(tmp_path / "nope"))
    with pytest.raises(storage.ObjectNotFound):
        storage.read_bytes(image_host + "/img/nope.png")
    with pytest.raises(storage.StorageError, match="timed out"):
        storage.read_bytes(image_host + "/slow", timeout_s=0.5)
    with pytest.raises(storage.ObjectTooLarge):
        storage.read_bytes(image_host + "/big", max_bytes=1000)
    with pytest.raises(storage.StorageError, match="scheme"):
        storage.read_bytes("ftp://example.com/x")


def test_app_args_reject_unknown_keys_listing_valid_ones():
    from serve_app.config import AppArgs

    with pytest.raises(ValueError) as info:
        AppArgs.from_args({"model": "x", "max_upload_byte": 5})
    assert "max_upload_byte" in str(info.value) and "max_upload_bytes" in str(info.value)


def test_env_overrides_app_args(monkeypatch, tmp_path):
    from serve_app.config import AppArgs

    monkeypatch.setenv("VS_MODEL", "/models/clip")
    monkeypatch.setenv("VS_INDEX", str(tmp_path / "ix"))
    monkeypatch.setenv("VS_DTYPE", "bfloat16")
    args = AppArgs.from_args({"model": "openai/clip-vit-base-patch32", "index": "./data/index"})
    assert (args.model, args.index, args.dtype) == ("/models/clip", str(tmp_path / "ix"), "bfloat16")
    monkeypatch.setenv("VS_DTYPE", "float16")
    with pytest.raises(ValueError, match="dtype"):
        AppArgs.from_args({})


def test_relative_index_is_pinned_to_an_absolute_path(monkeypatch, tmp_path):
    from serve_app.config import AppArgs

    monkeypatch.chdir(tmp_path)
    assert AppArgs.from_args({"index": "./data/index"}).index == str(tmp_path / "data" / "index")
    assert AppArgs.from_args({"index": "s3://bucket/ix"}).index == "s3://bucket/ix"


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "batch_jobs", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_help_for_every_command():
    for command in ("sample-catalog", "make-random-clip", "ingest", "demo", "export-onnx", "evaluate",
                    "make-eval-queries", "dedup-report"):
        result = _cli(command, "--help")
        assert result.returncode == 0 and "usage" in result.stdout


def test_cli_make_random_clip_and_sample_catalog(tmp_path):
    result = _cli("make-random-clip", str(tmp_path / "m"), "--size", "tiny")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["weights"] == "random"
    from serve_app.embedding import load_clip

    assert load_clip(str(tmp_path / "m")).weights == "random"
    result = _cli("sample-catalog", "--out", str(tmp_path / "c.jsonl"), "--stamps-dir", str(tmp_path / "none"))
    assert result.returncode == 2 and "apt-get install tuxpaint-stamps-default" in result.stderr


def test_cli_ingest_reports_an_unloadable_model_clearly(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"product_id": "1", "title": "t", "image": "x.png"}) + "\n")
    result = _cli("ingest", "--catalog", str(tmp_path / "c.jsonl"), "--index", str(tmp_path / "ix"),
                  "--model", str(tmp_path / "no-model"))
    assert result.returncode == 2 and "could not load CLIP" in result.stderr


def test_ray_workers_get_endpoints_but_never_credentials_in_a_runtime_env(monkeypatch):
    """Ray writes a runtime_env to its logs and cluster metadata: only non-secret settings travel in it."""
    from batch_jobs.pipeline import WORKER_ENV, worker_runtime_env

    for key in ("RAY_ADDRESS", *WORKER_ENV):
        monkeypatch.delenv(key, raising=False)
    secrets = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok",
               "VS_OPENSEARCH_USER": "admin", "VS_OPENSEARCH_PASSWORD": "hunter2"}
    for key, value in secrets.items() | {"VS_S3_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    env = worker_runtime_env()["runtime_env"]["env_vars"]
    assert env == {"VS_S3_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1"}
    assert not set(secrets.values()) & set(json.dumps(worker_runtime_env()).split('"'))
