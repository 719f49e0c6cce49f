"""Ingestion spreads over a two-node Ray cluster: ``ray.cluster_utils.Cluster`` starts a head and a second
raylet on this machine (real processes, their own object stores), the run schedules CLIP actors (which load
their own images on CPU nodes) and writers on both, and the index it builds equals the one-node run's (the session's ``ingested`` fixture)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

# Logical CPUs, not cores: two CLIP actors asking 2 CPUs each cannot share a 3-CPU node, so one lands on each,
# and each node keeps 1 CPU for the rest (Ray Data's streaming repartition asks a whole one); blocks of 8 rows
# give the two actors 9 blocks to share.
TWO_NODES = r"""
import json, os, sys
os.environ["RAY_AUTH_MODE"] = "disabled"
import ray
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
cluster.add_node(num_cpus=3)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
from batch_jobs.pipeline import IngestOptions, ingest

catalog, index, model = sys.argv[1:4]
report = ingest(catalog, index, IngestOptions(model=model, batch_size=8, embed_actors=2, embed_num_cpus=2.0,
                                               load_concurrency=4, fetch_timeout_s=2.0, rows_per_block=8))
nodes = [n["NodeID"][:12] for n in ray.nodes() if n["Alive"]]
print("REPORT " + json.dumps({"nodes": report.nodes, "cluster": nodes, "indexed": report.indexed,
                              "bad": sorted((b["product_id"] or "", b["line"]) for b in report.bad_rows)}))
ray.shutdown()
cluster.shutdown()
"""


def test_a_two_node_cluster_runs_every_stage_on_both_nodes_and_builds_the_same_index(
        ingested, catalog, served_model, catalog_vectors, tmp_path):
    from serve_app.index import open_index

    index = str(tmp_path / "two-nodes")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", TWO_NODES, str(catalog), index, served_model], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("REPORT "))
    found = json.loads(line.removeprefix("REPORT "))
    print(json.dumps(found["nodes"]))
    assert len(found["cluster"]) == 2
    for stage in ("load", "embed"):  # every row was loaded and embedded on some node ...
        assert set(found["nodes"][stage]) == set(found["cluster"]), (stage, found["nodes"])  # ... on both nodes
    one_node = ingested[1]
    assert found["indexed"] == one_node.indexed
    assert found["bad"] == sorted([b["product_id"] or "", b["line"]] for b in one_node.bad_rows)

    ids, vectors = open_index(index).all_vectors()
    assert sorted(ids) == sorted(catalog_vectors)
    expected = np.stack([catalog_vectors[i] for i in ids])
    cosine = np.sum(vectors * expected, axis=1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() > 0.9999, cosine.min()  # the same model on the same pixels, another process
