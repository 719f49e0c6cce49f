"""The manifest as a Ray dataset: JSONL + CSV + Parquet shards in one run, bad rows of every kind reported with
shard and line (none aborts the run), duplicates across shards, ``validate``, ``--max-bad-fraction`` and
``--resume`` after ``kill -9``. Expected counts come from how each catalog is written here."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # several real ingestions and CLI runs (about 3 minutes)

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("product_id", "title", "image", "category", "price")


def _write_shards(folder: Path, rows: list[dict]) -> dict:
    """Split ``rows`` over a JSONL, a CSV and a Parquet shard, then add bad rows of each kind; returns what a
    correct run must find: the valid unique products, the bad rows by (shard name, line), the duplicate winner."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b, c = rows[:10], rows[10:20], rows[20:30]
    jsonl = [json.dumps(r) for r in a]
    jsonl += ["{not json",  # line 11
              json.dumps({"product_id": "nul", "title": "x", "image": "imgs/a\x00b.png"}),  # 12: NUL byte
              json.dumps({"product_id": "nohost", "title": "x", "image": "http://"}),  # 13: malformed URL
              json.dumps({"product_id": "s3nokey", "title": "x", "image": "s3:///key"}),  # 14: s3 without bucket
              json.dumps({"title": "no id", "image": "x.png"})]  # 15: missing product_id
    (folder / "part-0.jsonl").write_text("\n".join(jsonl) + "\n")
    with open(folder / "part-1.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for r in b:
            writer.writerow({k: r.get(k) for k in FIELDS})
        writer.writerow({"product_id": "badprice", "title": "x", "image": b[0]["image"], "price": "-3"})  # line 12
    later = dict(a[0], title="the later row wins")  # duplicate across shards: part-2 comes after part-0
    table = pa.Table.from_pylist([{k: r.get(k) for k in FIELDS} for r in c + [later]])
    pq.write_table(table, folder / "part-2.parquet")
    return {"valid": 30, "duplicate": (a[0]["product_id"], "the later row wins"),
            "bad": {("part-0.jsonl", 11), ("part-0.jsonl", 12), ("part-0.jsonl", 13), ("part-0.jsonl", 14),
                    ("part-0.jsonl", 15), ("part-1.csv", 12), ("part-0.jsonl", 1)}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, sample_rows):
    folder = tmp_path_factory.mktemp("shards") / "catalog"
    rows = [{k: v for k, v in r.items() if k in FIELDS} for r in sample_rows if r["product_id"]][:30]
    return folder, _write_shards(folder, rows)


def test_jsonl_csv_and_parquet_shards_in_one_run_with_every_kind_of_bad_row(ray_session, shards, tiny_model,
                                                                             tmp_path):
    from batch_jobs.pipeline import IngestOptions, ingest
    from serve_app.index import open_index

    folder, expected = shards
    index = str(tmp_path / "index")
    report = ingest(str(folder), index, IngestOptions(model=tiny_model, batch_size=8, max_bad_fraction=0.5))
    assert report.published and report.rows_in_manifest == 30 + 7  # 30 good rows, 6 bad ones, 1 replaced
    assert report.products_in_index == expected["valid"] == open_index(index).count()
    found = {(Path(r["shard"]).name, r["line"]) for r in report.bad_rows}
    assert found == expected["bad"], report.bad_rows
    reasons = {(Path(r["shard"]).name, r["line"]): r["reason"] for r in report.bad_rows}
    assert "control character" in reasons[("part-0.jsonl", 12)] and "no host" in reasons[("part-0.jsonl", 13)]
    assert "s3://bucket/key" in reasons[("part-0.jsonl", 14)] and "part-2.parquet" in reasons[("part-0.jsonl", 1)]
    product_id, title = expected["duplicate"]
    assert open_index(index).get([product_id])[0]["title"] == title


def test_a_glob_selects_shards(ray_session, shards):
    from batch_jobs.pipeline import validated_catalog

    folder, _ = shards
    checked = validated_catalog(str(folder / "part-[01].*"))
    assert checked.shards == 2 and checked.rows == 15 + 11


def test_validate_reports_bad_rows_and_missing_images_and_embeds_nothing(ray_session, shards, tmp_path):
    folder, expected = shards
    missing = tmp_path / "more"
    missing.mkdir()
    (missing / "gone.jsonl").write_text(json.dumps({"product_id": "gone", "title": "x", "image": "nope.png"}) + "\n")
    env = os.environ | {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    out = subprocess.run([sys.executable, "-m", "batch_jobs", "validate", "--catalog", str(folder),
                          "--report", str(tmp_path / "bad.json")], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 1, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["rows"], summary["bad"], summary["valid"]) == (37, 7, 30)
    bad = json.loads((tmp_path / "bad.json").read_text())["bad_rows"]
    assert {(Path(r["shard"]).name, r["line"]) for r in bad} == expected["bad"]
    out = subprocess.run([sys.executable, "-m", "batch_jobs", "validate", "--catalog", str(missing),
                          "--check-images"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert json.loads(out.stdout)["bad"] == 1 and "image not found" in out.stderr
    assert not list(tmp_path.glob("**/*.lance"))


def test_too_many_bad_rows_do_not_publish_and_the_alias_stays(ray_session, sample_rows, tiny_model, tmp_path):
    from batch_jobs.pipeline import IngestOptions, ingest
    from serve_app.index import open_index

    good = [{k: r[k] for k in ("product_id", "title", "image")} for r in sample_rows[:8]]
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in good))
    index = str(tmp_path / "index")
    first = ingest(str(catalog), index, IngestOptions(model=tiny_model))
    broken = good + [{"product_id": f"lost-{i}", "title": "x", "image": f"/nonexistent/{i}.png"} for i in range(4)]
    catalog.write_text("".join(json.dumps(r) + "\n" for r in broken))
    second = ingest(str(catalog), index, IngestOptions(model=tiny_model, max_bad_fraction=0.25))
    assert not second.published and second.bad_fraction == pytest.approx(4 / 12, abs=1e-3)
    assert "max_bad_fraction" in second.not_published_because
    current = open_index(index)
    assert current.version == first.version and current.count() == 8


@pytest.mark.slow
def test_kill_9_half_way_then_resume_gives_the_full_count_each_image_embedded_once(ray_session, sample_rows,
                                                                                   tiny_model, tmp_path):
    """A run is killed once its unpublished version holds its first appends (>= 256 of 1,000 rows); ``--resume`` continues that
    version, embeds only the rest (its report says how many it found), and publishes the full catalog."""
    import lancedb

    from serve_app.index import open_index

    rows = [{"product_id": f"{r['product_id']}-{i}", "title": r["title"], "image": r["image"]}
            for i in range(20) for r in sample_rows][:1000]  # appended 128-row block by block
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = tmp_path / "index"
    env = os.environ | {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "batch_jobs", "ingest", "--catalog", str(catalog), "--index", str(index),
               "--model", tiny_model, "--batch-size", "8", "--lease-ttl-s", "6", "--write-concurrency", "1"]
    run = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written, deadline = 0, time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
        try:
            tables = [t for t in lancedb.connect(str(index)).table_names() if t.startswith("products-")]
            written = lancedb.connect(str(index)).open_table(tables[0]).count_rows() if tables else 0
        except Exception:  # noqa: BLE001 - the table is being created
            continue
        if written >= 256:  # the first appends are in
            break
    assert run.poll() is None, "the run ended before it could be killed: use a larger catalog"
    assert written < len(rows)
    run.send_signal(signal.SIGKILL)
    run.wait()
    time.sleep(7)  # the killed run's lease expires
    out = subprocess.run(command + ["--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    print(json.dumps({"rows": len(rows), "written_before_kill": written, "resumed": report["resumed"],
                      "indexed_by_resume": report["indexed"]}))
    already = report["resumed"]["products"]
    assert already >= written and report["indexed"] == len(rows) - already  # nothing embedded twice
    assert report["published"] and open_index(str(index)).count() == len(rows)
    assert report["version"] == report["resumed"]["version"]
