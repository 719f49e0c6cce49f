"""``python -m batch_jobs evaluate``: the metrics against hand-computed answers, the query-file errors, an end-to-end
local run (no Ray) against NumPy ranks of the same images, and ``--url`` against direct HTTP calls.

Random weights: the metrics of these runs say nothing about semantic quality; what is checked is that evaluate
ranks and scores exactly what the model and the index answer.
"""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_jobs.cli import main
from batch_jobs.evaluate import (METRICS, QueryFileError, dcg_at, first_relevant_rank, make_query_set, misses_csv,
                                 ndcg_at, parse_queries, query_metrics, read_queries, recall_at, reciprocal_rank,
                                 score_queries)

# --- (a) metrics -----------------------------------------------------------------------------------------------


def test_one_relevant_product_at_rank_3():
    ranked = ["x", "y", "p", "z", "w", "v"]
    assert first_relevant_rank(ranked, {"p"}) == 3
    assert reciprocal_rank(ranked, {"p"}) == pytest.approx(1 / 3)
    assert recall_at(ranked, {"p"}, 1) == 0.0
    assert recall_at(ranked, {"p"}, 5) == 1.0
    assert recall_at(ranked, {"p"}, 10) == 1.0
    # DCG = 1 / log2(3 + 1); the ideal puts p first: 1 / log2(2) = 1
    assert ndcg_at(ranked, {"p": 1.0}, 10) == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert query_metrics(ranked, {"p": 1.0}) == pytest.approx(
        {"recall@1": 0.0, "recall@5": 1.0, "recall@10": 1.0, "ndcg@10": 0.5, "mrr": 1 / 3})


def test_nothing_relevant_fetched_scores_zero():
    ranked = [f"x{i}" for i in range(10)]
    assert first_relevant_rank(ranked, {"p"}) is None
    assert query_metrics(ranked, {"p": 1.0}) == {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "ndcg@10": 0.0,
                                                 "mrr": 0.0}


def test_graded_relevance_by_hand():
    grades = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0}  # d: judged, not relevant
    ranked = ["x", "b", "a", "d", "y", "c"]
    # DCG@10 = 0/log2(2) + 2/log2(3) + 3/log2(4) + 0/log2(5) + 0/log2(6) + 1/log2(7)
    dcg = 2 / math.log2(3) + 3 / 2 + 1 / math.log2(7)
    # ideal order a, b, c, d: 3/log2(2) + 2/log2(3) + 1/log2(4) + 0
    ideal = 3 + 2 / math.log2(3) + 1 / 2
    assert dcg_at(ranked, grades, 10) == pytest.approx(dcg)
    assert ndcg_at(ranked, grades, 10) == pytest.approx(dcg / ideal) == pytest.approx(0.65480, abs=1e-5)
    # a cut-off inside the list: DCG@3 = 2/log2(3) + 3/2; IDCG@3 = 3 + 2/log2(3) + 1/2
    assert ndcg_at(ranked, grades, 3) == pytest.approx((2 / math.log2(3) + 1.5) / ideal)
    relevant = {"a", "b", "c"}
    assert recall_at(ranked, relevant, 1) == 0.0
    assert recall_at(ranked, relevant, 2) == pytest.approx(1 / 3)
    assert recall_at(ranked, relevant, 5) == pytest.approx(2 / 3)
    assert recall_at(ranked, relevant, 10) == 1.0
    assert reciprocal_rank(ranked, relevant) == 0.5
    assert ndcg_at(["a", "b", "c"], grades) == pytest.approx(1.0)


def test_metric_inputs_that_cannot_be_scored_raise():
    with pytest.raises(ValueError, match="relevant"):
        recall_at(["a"], set(), 10)
    with pytest.raises(ValueError, match="n >= 1"):
        recall_at(["a"], {"a"}, 0)
    with pytest.raises(ValueError, match="grade > 0"):
        ndcg_at(["a"], {"a": 0.0})


def test_report_averages_over_queries_per_kind_and_lists_misses(tmp_path):
    (tmp_path / "q.jpg").write_bytes(b"not read by the parser")
    queries = parse_queries("\n".join([
        json.dumps({"id": "t1", "text": "a frog", "relevant": ["p1"]}),
        json.dumps({"id": "t2", "text": "a cat", "relevant": {"p2": 2, "p3": 1}}),
        json.dumps({"id": "i1", "image": "q.jpg", "relevant": ["p4"]}),
    ]), tmp_path)
    rankings = [["p1", "x"], ["x", "p3", "p2"], [f"y{i}" for i in range(10)]]
    report = score_queries(queries, rankings, 10)
    t2_ndcg = (1 / math.log2(3) + 2 / math.log2(4)) / (2 + 1 / math.log2(3))
    assert report["by_kind"]["text"]["queries"] == 2 and report["by_kind"]["image"]["queries"] == 1
    assert report["by_kind"]["text"]["metrics"]["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert report["by_kind"]["text"]["metrics"]["ndcg@10"] == pytest.approx((1 + t2_ndcg) / 2, abs=1e-6)
    assert report["by_kind"]["image"]["metrics"]["recall@10"] == 0.0
    assert report["metrics"]["recall@1"] == pytest.approx(1 / 3, abs=1e-6)
    assert report["metrics"]["recall@5"] == pytest.approx(2 / 3, abs=1e-6)
    assert report["misses"] == 2
    rows = list(csv.DictReader(io.StringIO(misses_csv(queries, report))))
    assert [(r["query_id"], r["kind"], r["first_relevant_rank"]) for r in rows] == [("t2", "text", "2"),
                                                                                     ("i1", "image", "")]
    assert json.loads(rows[0]["relevant"]) == {"p2": 2.0, "p3": 1.0} and rows[0]["query"] == "a cat"
    assert json.loads(rows[1]["relevant"]) == ["p4"] and json.loads(rows[1]["top5"]) == [f"y{i}" for i in range(5)]
    assert rows[1]["query"] == "q.jpg"


# --- (b) query files -------------------------------------------------------------------------------------------


BAD_LINES = [  # (line, the reason the error must name)
    ("{not json", "not valid JSON"),
    ('["text", "relevant"]', "expected a JSON object"),
    (json.dumps({"text": "x", "relevant": ["p"], "k": 5}), "unknown key(s) ['k']"),
    (json.dumps({"text": "x", "image": "q.jpg", "relevant": ["p"]}), 'exactly one of "text" or "image"'),
    (json.dumps({"relevant": ["p"]}), 'exactly one of "text" or "image"'),
    (json.dumps({"text": "  ", "relevant": ["p"]}), '"text" must be a non-empty string'),
    (json.dumps({"text": "x"}), 'missing "relevant"'),
    (json.dumps({"text": "x", "relevant": []}), "non-empty list"),
    (json.dumps({"text": "x", "relevant": "p1"}), "got str"),
    (json.dumps({"text": "x", "relevant": ["p", "p"]}), "lists a product twice"),
    (json.dumps({"text": "x", "relevant": {"p": 0}}), "at least one grade > 0"),
    (json.dumps({"text": "x", "relevant": {"p": -1}}), "finite number >= 0"),
    (json.dumps({"text": "x", "relevant": {"p": True}}), "finite number >= 0"),
    (json.dumps({"image": "missing.jpg", "relevant": ["p"]}), "image file not found"),
    (json.dumps({"id": 7, "text": "x", "relevant": ["p"]}), '"id" must be a non-empty string'),
    (json.dumps({"id": "dup", "text": "x", "relevant": ["p"]}), "duplicate id 'dup' (first on line 1)"),
]


def test_every_bad_line_is_named_with_its_number_and_reason(tmp_path):
    good = json.dumps({"id": "dup", "text": "x", "relevant": ["p"]})
    text = "\n".join([good] + [line for line, _ in BAD_LINES] + ["", good.replace("dup", "ok")])
    with pytest.raises(QueryFileError) as e:
        parse_queries(text, tmp_path, "q.jsonl")
    message = str(e.value)
    assert message.startswith(f"q.jsonl: {len(BAD_LINES)} bad line(s)")
    for number, (_, reason) in enumerate(BAD_LINES, 2):
        assert f"line {number}: " in message and reason in message.split(f"line {number}: ")[1].split("\n")[0]


def test_image_paths_resolve_against_the_query_file(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "a.png")
    other = tmp_path / "b.png"
    Image.new("RGB", (8, 8)).save(other)
    path = tmp_path / "sub" / "queries.jsonl"
    path.write_text(json.dumps({"image": "a.png", "relevant": ["p"]}) + "\n\n" +
                    json.dumps({"id": "abs", "image": str(other), "relevant": {"p": 1, "q": 0}}) + "\n")
    first, second = read_queries(path)
    assert (first.id, first.kind, first.source, first.line) == ("line1", "image", str(tmp_path / "sub" / "a.png"), 1)
    assert (second.id, second.source, second.line, second.relevant) == ("abs", str(other), 3, {"p"})


@pytest.mark.parametrize("content, expected", [
    (None, "cannot read query file"),
    ("\n\n", "no queries"),
    ('{"text": "x", "relevant": ["p"]}\n[1]\n', "line 2: expected a JSON object"),
])
def test_cli_reports_query_file_errors_with_exit_code_2(tmp_path, capsys, content, expected):
    path = tmp_path / "queries.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["evaluate", "--queries", str(path), "--index", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_cli_rejects_a_service_with_a_local_model_and_a_k_below_10(tmp_path, capsys):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"text": "x", "relevant": ["p"]}\n')
    assert main(["evaluate", "--queries", str(path), "--url", "http://127.0.0.1:9", "--model", "m"]) == 2
    assert "--url searches through the service" in capsys.readouterr().err
    assert main(["evaluate", "--queries", str(path), "--index", str(tmp_path), "--k", "5"]) == 2
    assert "--k must be between 10" in capsys.readouterr().err
    assert main(["evaluate", "--queries", str(path), "--index", str(tmp_path / "none")]) == 2
    assert "no index at" in capsys.readouterr().err


# --- the generated query set -----------------------------------------------------------------------------------


def test_make_eval_queries_writes_seeded_transformed_copies(tmp_path, sample_rows, capsys):
    catalog = tmp_path / "catalog.jsonl"
    rows = sample_rows[:6] + [{"product_id": "broken", "title": "broken", "image": str(tmp_path / "none.png")}]
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for out in ("a", "b"):
        assert main(["make-eval-queries", "--catalog", str(catalog), "--out", str(tmp_path / out), "--seed", "3"]) == 0
    printed = capsys.readouterr()
    assert "skipped broken" in printed.err
    queries = read_queries(tmp_path / "a" / "queries.jsonl")
    assert len(queries) == 6 and [q.relevant for q in queries] == [{r["product_id"]} for r in sample_rows[:6]]
    for q, row in zip(queries, sample_rows[:6]):
        copy, source = Image.open(q.source), Image.open(row["image"])
        assert copy.format == "JPEG" and copy.mode == "RGB"
        assert 0.85 * source.width - 1 <= copy.width <= 0.90 * source.width + 1  # centre crop of 85-90 %
        assert (tmp_path / "b" / Path(q.source).name).read_bytes() == Path(q.source).read_bytes()  # same seed
    meta = [json.loads(line)["meta"] for line in (tmp_path / "a" / "queries.jsonl").read_text().splitlines()]
    assert all(2 <= abs(m["rotate_deg"]) <= 5 and 0.05 <= abs(m["brightness"] - 1) <= 0.10 for m in meta)
    sampled = make_query_set(sample_rows[:20], tmp_path / "c", seed=1, limit=5)
    assert sampled["count"] == 5 and len(read_queries(sampled["queries"])) == 5


# --- (c) end to end in this process, without Ray ---------------------------------------------------------------

N_CATALOG = 30
N_TEXT = 5
TIE = 1e-4  # cosines this close may rank either way between two computations (batching, float32 sums)


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, served_model, embedder, sample_rows):
    """A LanceDB index of 30 sample products built without Ray: ingestion's stage functions (``load_images``, the
    embed step of ``EmbedImages``, ``to_index_rows``), then a new version upserted and published as the pipeline
    does. Returns ``(index_uri, rows)``."""
    from batch_jobs.pipeline import model_info
    from batch_jobs.stages import load_images, to_index_rows
    from serve_app.catalog import read_manifest
    from serve_app.index import create_version

    folder = tmp_path_factory.mktemp("eval-index")
    rows = sample_rows[::2][:N_CATALOG]
    manifest = folder / "catalog.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    products, bad = read_manifest(str(manifest))
    assert not bad
    items = [p.model_dump() | {"attributes": json.dumps(p.attributes, sort_keys=True)} for p in products]
    batch = load_images({k: [item[k] for item in items] for k in items[0]}, served_model)
    assert not any(batch["error"])
    columns = {k: list(v) for k, v in batch.items() if k != "pixels"}
    columns["vector"] = list(embedder.embed_pixels(batch["pixels"]))  # what EmbedImages does in its actor
    uri = str(folder / "index")
    version = create_version(uri, model_info(served_model))
    version.upsert(to_index_rows(columns, embedder.dim))
    version.finish_bulk_load()
    version.publish()
    return uri, rows


def _rank_bounds(scores: np.ndarray, own: int) -> tuple[int, int]:
    """Best and worst 1-based rank of product ``own`` when cosines within :data:`TIE` of its own may order either
    way."""
    others = np.delete(scores, own)
    return 1 + int(np.sum(others > scores[own] + TIE)), 1 + int(np.sum(others >= scores[own] - TIE))


def test_local_evaluate_equals_numpy_ranks_of_the_same_images(tmp_path, small_index, served_model, embedder, capsys):
    from serve_app.images import decode_image

    uri, rows = small_index
    made = make_query_set(rows, tmp_path / "queries", seed=0)
    assert made["count"] == N_CATALOG and not made["skipped"]
    path = Path(made["queries"])
    texts = [{"id": f"text-{r['product_id']}", "text": r["title"], "relevant": [r["product_id"]]} for r in rows[:N_TEXT]]
    with path.open("a") as f:
        f.write("".join(json.dumps(t) + "\n" for t in texts))
    report_path, misses_path = tmp_path / "report.json", tmp_path / "misses.csv"
    assert main(["evaluate", "--queries", str(path), "--index", uri, "--model", served_model, "--k", str(N_CATALOG),
                 "--json", str(report_path), "--misses", str(misses_path)]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert "recall@10" in printed.err and "random weights" in printed.err
    assert report["queries"] == N_CATALOG + N_TEXT and report["k"] == N_CATALOG
    assert report["by_kind"]["image"]["queries"] == N_CATALOG and report["by_kind"]["text"]["queries"] == N_TEXT
    assert report["source"]["mode"] == "local" and report["source"]["products"] == N_CATALOG

    # The independent answer: the embedder's vectors of the same files, exact cosine k-NN in NumPy.
    ids = [r["product_id"] for r in rows]
    catalog = embedder.embed_images([decode_image(Path(r["image"]).read_bytes()) for r in rows])  # [N, D]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    image_vectors = embedder.embed_images([decode_image((path.parent / q["image"]).read_bytes())
                                           for q in lines if "image" in q])
    vectors = np.concatenate([image_vectors, embedder.embed_texts([t["text"] for t in texts])])  # [Q, D]
    scores = vectors @ catalog.T  # [Q, N] cosines
    bounds = [_rank_bounds(scores[i], ids.index(q["relevant"][0])) for i, q in enumerate(lines)]

    per_query = json.loads(report_path.read_text())["per_query"]
    for (best, worst), q in zip(bounds, per_query):
        assert best <= q["first_relevant_rank"] <= worst, (q["id"], best, worst, q["first_relevant_rank"])
    expected = {"recall@10": lambda r: float(r <= 10), "mrr": lambda r: 1 / r, "ndcg@10": lambda r:
                (1 / math.log2(r + 1)) if r <= 10 else 0.0, "recall@1": lambda r: float(r == 1)}
    for metric, of_rank in expected.items():  # every metric falls as the rank grows: ties give an interval
        low, high = (np.mean([of_rank(b[side]) for b in bounds]) for side in (1, 0))
        assert low - 1e-6 <= report["metrics"][metric] <= high + 1e-6, (metric, low, high)
        if all(b[0] == b[1] for b in bounds):
            assert report["metrics"][metric] == pytest.approx(high, abs=1e-6)

    with misses_path.open() as f:
        misses = list(csv.DictReader(f))
    assert [m["query_id"] for m in misses] == [q["id"] for q in per_query if q["first_relevant_rank"] != 1]
    assert report["misses"] == len(misses) and report["misses_csv"] == str(misses_path)
    for m in misses:
        assert len(json.loads(m["top5"])) == 5 and int(m["first_relevant_rank"]) > 1


# --- (d) through the running service ---------------------------------------------------------------------------


def test_url_mode_equals_metrics_of_direct_http_calls(http, service, sample_rows, tmp_path, capsys):
    rows = sample_rows[:12]
    made = make_query_set(rows, tmp_path / "queries", seed=2)
    path = Path(made["queries"])
    with path.open("a") as f:
        for r in rows[:4]:
            f.write(json.dumps({"id": f"text-{r['product_id']}", "text": r["title"],
                                "relevant": [r["product_id"]]}) + "\n")
    report_path = tmp_path / "report.json"
    assert main(["evaluate", "--queries", str(path), "--url", service, "--json", str(report_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    per_query = json.loads(report_path.read_text())["per_query"]
    assert report["source"]["mode"] == "url" and report["source"]["model_weights"] == "random"
    assert report["by_kind"]["image"]["queries"] == len(rows) and report["by_kind"]["text"]["queries"] == 4

    direct_ranks = []
    for line, got in zip(path.read_text().splitlines(), per_query):
        q = json.loads(line)
        if "text" in q:
            response = http.post("/search/text", json={"query": q["text"], "k": 20})
        else:
            data = (path.parent / q["image"]).read_bytes()
            response = http.post("/search/image", files={"file": ("q.jpg", data, "image/jpeg")}, data={"k": "20"})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        for rank, product in enumerate(got["top"]):  # the same ranking, up to ties (TIE) in the service's scores
            tied = {r["product_id"] for r in results if abs(r["score"] - results[rank]["score"]) <= TIE}
            assert product in tied, (q["id"], rank, product, [r["product_id"] for r in results[:10]])
        top = [r["product_id"] for r in results[:10]]
        direct_ranks.append(top.index(q["relevant"][0]) + 1 if q["relevant"][0] in top else None)
    n = len(direct_ranks)
    direct = {"recall@1": sum(r == 1 for r in direct_ranks) / n,
              "recall@10": sum(r is not None for r in direct_ranks) / n,
              "mrr": sum(1 / r for r in direct_ranks if r) / n,
              "ndcg@10": sum(1 / math.log2(r + 1) for r in direct_ranks if r) / n}
    for metric, value in direct.items():  # equal unless a tie flipped a relevant product's rank: at most 1/n
        assert report["metrics"][metric] == pytest.approx(value, abs=1 / n + 1e-6), metric
    assert set(report["metrics"]) == set(METRICS)
