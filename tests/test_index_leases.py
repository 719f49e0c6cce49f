"""Ingestion leases and exact version names, for real on a local folder, on moto's S3 HTTP server and on
osmem-server (which implements ``op_type=create`` and ``if_seq_no``/``if_primary_term`` like OpenSearch).

No Ray here: the two-concurrent-ingestions test lives with the other pipeline tests.
"""

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid

import lancedb
import numpy as np
import pytest

from serve_app import storage
from serve_app.index import IndexInfo, IndexOpenError, LeaseHeld, LeaseLost, create_version, lease, open_index
from serve_app.index import lancedb_backend
from serve_app.index.base import stored_schema, version_name, version_of
from serve_app.index.lease import LeaseRecord, _iso, acquire
from tests.conftest import free_port
from tests.test_index_conformance import make_rows

DIM = 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        storage.s3_client().create_bucket(Bucket="leases")
        yield "s3://leases"
    storage.s3_client.cache_clear()
    server.stop()


@pytest.fixture(scope="module")
def osmem():
    try:
        from osmem_server import OsmemServer
    except ImportError:
        pytest.skip("osmem-server is not installed (pip install -e .[test])")
    with OsmemServer.start(japanese=False) as server:
        yield server


@pytest.fixture()
def osmem_base(osmem):
    with osmem.clone() as clone:
        yield clone.url.replace("http://", "opensearch+http://")


@pytest.fixture(params=["local", "s3", "opensearch"])
def where(request, tmp_path):
    """An index URI whose lease lives in a lock file, an S3 object or an OpenSearch document."""
    if request.param == "local":
        return str(tmp_path / "index")
    if request.param == "s3":
        return f"{request.getfixturevalue('s3')}/index-{uuid.uuid4().hex[:8]}"
    return f"{request.getfixturevalue('osmem_base')}/products"


def _store(uri):
    from serve_app.index import _backend

    return _backend(uri).lease_store(uri)


def _refused(uri, run_id="run-b", **kwargs) -> str:
    with pytest.raises(LeaseHeld) as info:
        with lease(uri, run_id, **kwargs):
            pass
    return str(info.value)


def test_a_second_holder_is_refused_with_the_owner_and_expiry(where):
    with lease(where, "run-a", ttl_s=30) as held:
        message = _refused(where)
        assert "'run-a'" in message and repr(socket.gethostname()) in message and f"pid {os.getpid()}" in message
        assert held.record.expires_at in message and "lease_wait_s" in message
        assert _store(where).read()[0].token == held.record.token
    assert _store(where).read() is None  # released
    with lease(where, "run-b") as again:
        assert again.record.run_id == "run-b"


def test_at_most_one_holder_among_threads(where):
    active, most, entries = [0], [0], []
    guard = threading.Lock()

    def run(name):
        for _ in range(3):
            with lease(where, name, ttl_s=30, wait_s=30, poll_s=0.01):
                with guard:
                    active[0] += 1
                    most[0] = max(most[0], active[0])
                    entries.append(name)
                time.sleep(0.01)
                with guard:
                    active[0] -= 1

    threads = [threading.Thread(target=run, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert most[0] == 1 and len(entries) == 12 and _store(where).read() is None


def test_a_waiter_gets_the_lease_after_release(where):
    got = {}

    def waiter():
        with lease(where, "run-b", wait_s=20, poll_s=0.02) as held:
            got["at"], got["run"] = time.monotonic(), held.record.run_id

    with lease(where, "run-a"):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)
        assert "at" not in got
        released_at = time.monotonic()
    thread.join(20)
    assert got["run"] == "run-b" and got["at"] >= released_at


def test_a_waiter_gives_up_after_wait_s(where):
    with lease(where, "run-a"):
        started = time.monotonic()
        assert "waited 0.3 s" in _refused(where, wait_s=0.3, poll_s=0.05)
        assert 0.3 <= time.monotonic() - started < 5


def test_an_expired_lease_is_taken_over(where):
    store = _store(where)
    crashed = LeaseRecord("run-crashed", "other-host", 4242, "tok", _iso(time.time() - 100), _iso(time.time() - 1))
    assert store.create(crashed.to_dict()) is not None
    with lease(where, "run-b") as held:
        assert store.read()[0].run_id == "run-b" and held.record.token != "tok"
    live = LeaseRecord("run-stuck", "other-host", 4242, "tok", _iso(time.time()), _iso(time.time() + 60))
    assert store.create(live.to_dict()) is not None
    assert "'run-stuck' on host 'other-host' (pid 4242" in _refused(where)


def test_a_holder_whose_lease_was_taken_over_can_neither_renew_nor_release_it(where):
    store = _store(where)
    first = acquire(store, "run-a", ttl_s=0.3, renew_every_s=3600)  # its heartbeat never beats in this test
    time.sleep(0.4)
    second = acquire(store, "run-b", ttl_s=30)  # takes over the expired lease
    with pytest.raises(LeaseLost, match="now held by run 'run-b'"):
        first.check()
    assert first.lost
    first.release()
    assert store.read()[0].run_id == "run-b"
    second.release()
    assert store.read() is None


def test_the_heartbeat_renews_while_the_run_lasts(where):
    held = acquire(_store(where), "run-a", ttl_s=2.0, renew_every_s=0.2)  # tolerates a 1.8 s stall of this CPU
    try:
        first_expiry = held.record.expires_at
        time.sleep(2.5)  # longer than the TTL: only renewals keep it
        assert held.record.expires_at > first_expiry and not held.lost
        assert "'run-a'" in _refused(where)
    finally:
        held.release()
    assert _store(where).read() is None


def test_the_lease_is_released_when_the_run_fails(where):
    with pytest.raises(RuntimeError, match="pipeline broke"):
        with lease(where, "run-a"):
            raise RuntimeError("pipeline broke")
    assert _store(where).read() is None


def test_lease_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="ttl_s"):
        with lease(str(tmp_path), "run-a", ttl_s=0):
            pass
    from batch_jobs.pipeline import IngestOptions

    with pytest.raises(ValueError, match="lease_wait_s"):
        IngestOptions(model="m", lease_wait_s=-1)


def test_a_lease_held_by_another_process_then_taken_over_after_it_is_killed(tmp_path):
    uri = str(tmp_path / "index")
    code = ("import sys, time; from serve_app.index import lease\n"
            f"with lease({uri!r}, 'child', ttl_s=1.0):\n    print('held', flush=True); time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert f"'child' on host {socket.gethostname()!r} (pid {child.pid}" in _refused(uri)
        child.kill()  # no release: the lock file stays until its expiry
        child.wait(10)
        assert _store(uri).read()[0].pid == child.pid
        with lease(uri, "parent", wait_s=10, poll_s=0.05) as held:
            assert _store(uri).read()[0].token == held.record.token
    finally:
        child.kill()


def test_an_unreadable_lock_file_counts_as_held_for_a_grace_period(tmp_path):
    uri = str(tmp_path / "index")
    os.makedirs(uri)
    lock = os.path.join(uri, lancedb_backend.LEASE_FILE)
    with open(lock, "wb") as f:
        f.write(b'{"run_id": "cut')  # a writer that died mid-write
    assert "unreadable lease record" in _refused(uri)
    os.utime(lock, (time.time() - 60, time.time() - 60))
    with lease(uri, "run-b") as held:
        assert held.record.run_id == "run-b"


# --- version names are matched exactly -----------------------------------------------------------------

def test_version_of_matches_one_alias_and_model_exactly():
    assert version_of("products", version_name("products", "openai/clip", 3), "openai/clip") == 3
    assert version_of("products", "products-eu-clip-v1", "clip") is None  # products-eu's version
    assert version_of("products-eu", "products-eu-clip-v1", "clip") == 1
    assert version_of("products", "products-eu-clip-v1", "/models/eu-clip") == 1  # the same name, other reading
    assert version_of("products", "products-clip-v1-old", "clip") is None
    assert version_of("products", "products-clip-v", "clip") is None


def test_publishing_products_leaves_products_eu_untouched_on_opensearch(osmem_base):
    eu_uri, uri = f"{osmem_base}/products-eu", f"{osmem_base}/products"
    vectors = np.eye(DIM, dtype=np.float32)
    rows = make_rows(vectors, np.arange(DIM))
    eu = open_index(eu_uri, IndexInfo("clip", DIM))
    eu_next = create_version(eu_uri, IndexInfo("clip", DIM))
    eu_next.upsert(rows)
    eu_next.finish_bulk_load()
    eu_next.publish()
    client = eu.client
    client.indices.create(index="products-eu-clip-v7", body={"mappings": {"_meta": {  # made by hand
        "alias": "products-eu", "model_id": "clip", "dim": DIM}}})
    eu_indices = {"products-eu-clip-v1", "products-eu-clip-v2", "products-eu-clip-v7"}

    dropped = []
    for _ in range(3):
        version = create_version(uri, IndexInfo("model-a", DIM))
        version.upsert(rows)
        version.finish_bulk_load()
        dropped += version.publish(keep=2)
    assert dropped == ["products-model-a-v1"]  # numbered from 1: products-eu's v7 is not counted
    assert eu_indices <= set(client.indices.get(index="products-*"))
    assert set(client.indices.get_alias(name="products-eu")) == {"products-eu-clip-v2"}
    assert open_index(eu_uri).count() == DIM

    # Model "eu-clip" under alias "products" names its versions like products-eu's: numbering skips theirs.
    tricky = create_version(uri, IndexInfo("/models/eu-clip", DIM))
    assert tricky.version == "products-eu-clip-v8"
    tricky.upsert(rows)
    tricky.publish(keep=2)
    assert tricky._versions() == ["products-model-a-v3", "products-eu-clip-v8"]
    assert eu._versions() == ["products-eu-clip-v1", "products-eu-clip-v2", "products-eu-clip-v7"]
    eu_last = create_version(eu_uri, IndexInfo("clip", DIM))
    assert eu_last.version == "products-eu-clip-v9"
    eu_last.upsert(rows)
    assert sorted(eu_last.publish(keep=2)) == ["products-eu-clip-v1", "products-eu-clip-v7"]
    assert open_index(uri).version == "products-eu-clip-v8" and open_index(uri).count() == DIM


def test_publishing_leaves_other_aliases_entries_and_tables_untouched_on_lancedb(tmp_path):
    uri = str(tmp_path / "index")
    rows = make_rows(np.eye(DIM, dtype=np.float32), np.arange(DIM))
    first = open_index(uri, IndexInfo("model-a", DIM))
    db = lancedb.connect(uri)
    foreign = db.create_table("products-eu-clip-v1", schema=stored_schema(DIM))
    foreign.add([{"product_id": "eu-1", "phash": 1, "vector": [1.0] + [0.0] * (DIM - 1),
                  "phash_bits": [0] * 8}])
    state_file = tmp_path / "index" / lancedb_backend.INFO_FILE
    state = json.loads(state_file.read_text())
    state["versions"]["products-eu-clip-v1"] = {"model_id": "clip", "dim": DIM, "weights": "random"}
    state_file.write_text(json.dumps(state))

    dropped = []
    for _ in range(3):
        version = create_version(uri, IndexInfo("model-a", DIM))
        version.upsert(rows)
        dropped += version.publish(keep=2)
    assert dropped == [first.version, "products-model-a-v2"]
    state = json.loads(state_file.read_text())
    assert set(state["versions"]) == {"products-eu-clip-v1", "products-model-a-v3", "products-model-a-v4"}
    assert lancedb_backend.own_versions(state) == ["products-model-a-v3", "products-model-a-v4"]
    assert lancedb.connect(uri).open_table("products-eu-clip-v1").count_rows() == 1


def test_a_lancedb_version_name_already_taken_is_skipped_or_refused(tmp_path, monkeypatch):
    uri = str(tmp_path / "index")
    open_index(uri, IndexInfo("model-a", DIM))
    lancedb.connect(uri).create_table("products-model-a-v5", schema=stored_schema(DIM))  # a run died here
    assert create_version(uri, IndexInfo("model-a", DIM)).version == "products-model-a-v6"
    monkeypatch.setattr(lancedb_backend, "_table_names", lambda db: [])  # a writer that ignored the lease
    lancedb.connect(uri).create_table("products-model-a-v7", schema=stored_schema(DIM))
    with pytest.raises(IndexOpenError, match="cannot create version 'products-model-a-v7'.*already exists"):
        create_version(uri, IndexInfo("model-a", DIM))


# --- the alias file is written durably ------------------------------------------------------------------

def test_local_writes_fsync_the_file_and_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "index" / "visual_search.json"
    storage.write_bytes(str(target), b'{"current": "v1"}')
    assert synced == ["file", "folder"] and target.read_bytes() == b'{"current": "v1"}'

    synced.clear()
    open_index(str(tmp_path / "other"), IndexInfo("model-a", DIM))  # records and publishes a first version
    assert synced.count("folder") >= 2 and "file" in synced

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        storage.write_bytes(str(target), b"new")
    assert target.read_bytes() == b'{"current": "v1"}' and os.listdir(target.parent) == ["visual_search.json"]


def test_cli_takes_lease_wait_s():
    from batch_jobs.cli import build_parser, ingest_options

    args = build_parser().parse_args(["ingest", "--catalog", "x.jsonl", "--model", "some-model",
                                      "--lease-wait-s", "90"])
    assert ingest_options(args).lease_wait_s == 90.0


def test_two_runs_starting_at_the_same_moment_the_refused_one_names_the_holder(tmp_path):
    """The lock file appears whole (hard link of a written file): a run racing the creator never reads it empty."""
    from serve_app.index import LeaseHeld, lease

    for round_ in range(20):
        index, outcomes, barrier = str(tmp_path / f"index-{round_}"), {}, threading.Barrier(2)

        def run(i, index=index, outcomes=outcomes, barrier=barrier):
            barrier.wait()
            try:
                with lease(index, f"ingest-run{i}", ttl_s=30, wait_s=0):
                    outcomes[i] = "held"
                    barrier.wait()  # hold it until the other run has been refused
            except LeaseHeld as e:
                outcomes[i] = str(e)
                barrier.wait()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        holder = next(i for i, o in outcomes.items() if o == "held")
        refused = outcomes[1 - holder]
        assert f"run 'ingest-run{holder}'" in refused, refused
