"""Retrieval quality on labelled queries: ``python -m batch_jobs evaluate`` and ``make-eval-queries`` (no Ray import).

A query file is JSON Lines, one query per line: ``{"id": "q1", "text": "red shoe", "relevant": ["p1", "p7"]}`` or
``{"image": "photos/q2.jpg", "relevant": {"p3": 2, "p4": 1}}`` (an image path relative to the query file's folder,
or absolute, or an ``http(s)://``/``s3://`` URI; ``relevant`` a list of product ids, or graded judgements
``{product_id: grade}`` where a grade > 0 is relevant and 0 is judged not relevant). ``id`` is optional (default
``line<N>``) and ``meta`` is free-form and ignored. Each query is searched either in this process, through the
service's own stage functions (:class:`LocalSearcher`), or through a running service (:class:`HttpSearcher`), and
scored with the pure metric functions below, averaged over queries (each query weighs the same).
:func:`make_query_set` writes a known-answer set: transformed copies of catalog images, each labelled with the
product it came from.
"""

import csv
import io
import json
import logging
import math
import mimetypes
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from serve_app import storage

log = logging.getLogger("visual_search.evaluate")

CUTOFFS = (1, 5, 10)  # recall@n
NDCG_CUTOFF = 10
METRICS = tuple(f"recall@{n}" for n in CUTOFFS) + (f"ndcg@{NDCG_CUTOFF}", "mrr")
KINDS = ("text", "image")
QUERY_KEYS = ("id", "text", "image", "relevant", "meta")
MAX_LISTED_ERRORS = 20
QUERIES_FILE = "queries.jsonl"
JPEG_QUALITY = 70


class QueryFileError(ValueError):
    """A query file that cannot be read, or lines that are not valid queries (each named by its line number)."""


class EvaluationError(RuntimeError):
    """A query could not be searched: unreadable image, service error, or a model that does not fit the index."""


# --- metrics (pure) ---------------------------------------------------------------------------------------------

def first_relevant_rank(ranked: Sequence[str], relevant: Collection[str]) -> int | None:
    """1-based rank of the first product of ``relevant`` in ``ranked`` (best first), ``None`` when none is there."""
    return next((rank for rank, product in enumerate(ranked, 1) if product in relevant), None)


def recall_at(ranked: Sequence[str], relevant: Collection[str], n: int) -> float:
    """Recall@n = |relevant ∩ ranked[:n]| / |relevant|: the fraction of a query's relevant products found in its top
    ``n`` (Manning, Raghavan & Schütze 2008, "Introduction to Information Retrieval", §8.3). With one relevant product
    it equals the hit rate (1 if it is in the top ``n``, else 0).

    Raises:
        ValueError: ``relevant`` is empty or ``n < 1``.
    """
    if not relevant or n < 1:
        raise ValueError(f"recall@n needs n >= 1 and at least one relevant product, got n={n}, relevant={relevant!r}")
    return len(set(ranked[:n]) & set(relevant)) / len(set(relevant))


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str]) -> float:
    """1 / rank of the first relevant product in ``ranked`` (all fetched results), 0 when none was fetched; its mean
    over queries is the MRR (Voorhees 1999, "The TREC-8 Question Answering Track Report")."""
    rank = first_relevant_rank(ranked, relevant)
    return 0.0 if rank is None else 1.0 / rank


def dcg_at(ranked: Sequence[str], grades: Mapping[str, float], n: int) -> float:
    """DCG@n = Σ_{i=1..min(n, len(ranked))} grade(ranked_i) / log2(i + 1), with grade 0 for unjudged products.

    Cumulated gain with the gain equal to the grade and the discount log2(rank + 1) at every rank (Järvelin &
    Kekäläinen 2002, "Cumulated gain-based evaluation of IR techniques", ACM TOIS 20(4); the same linear-gain
    form as scikit-learn's ``ndcg_score``). ``ranked`` is assumed free of duplicates.
    """
    return sum(grades.get(product, 0.0) / math.log2(rank + 1) for rank, product in enumerate(ranked[:n], 1))


def ndcg_at(ranked: Sequence[str], grades: Mapping[str, float], n: int = NDCG_CUTOFF) -> float:
    """nDCG@n = DCG@n / IDCG@n in [0, 1], where IDCG@n is the DCG of the judged grades sorted in decreasing order
    (the best possible ranking), see :func:`dcg_at`.

    Raises:
        ValueError: no grade is above 0 (the ideal DCG is 0).
    """
    ideal = sum(g / math.log2(rank + 1) for rank, g in enumerate(sorted(grades.values(), reverse=True)[:n], 1))
    if ideal <= 0:
        raise ValueError(f"nDCG needs at least one grade > 0, got {dict(grades)!r}")
    return dcg_at(ranked, grades, n) / ideal


def query_metrics(ranked: Sequence[str], grades: Mapping[str, float]) -> dict[str, float]:
    """:data:`METRICS` of one query; ``"mrr"`` here is its reciprocal rank (the mean over queries is the MRR)."""
    relevant = {p for p, g in grades.items() if g > 0}
    scores = {f"recall@{n}": recall_at(ranked, relevant, n) for n in CUTOFFS}
    return scores | {f"ndcg@{NDCG_CUTOFF}": ndcg_at(ranked, grades), "mrr": reciprocal_rank(ranked, relevant)}


def mean_metrics(per_query: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """Each of :data:`METRICS` averaged over queries (rounded to 6 digits); ``None`` for no queries."""
    if not per_query:
        return None
    return {m: round(float(np.mean([q[m] for q in per_query])), 6) for m in METRICS}


# --- query files ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """One labelled query.

    Attributes:
        id: the line's ``id`` or ``line<N>``. kind: ``"text"`` or ``"image"``. line: 1-based line in the file.
        query: the text, or the image path as written in the file. source: the text, or the resolved image URI.
        grades: ``{product_id: grade}`` (1.0 each for a plain list); grade > 0 is relevant.
    """

    id: str
    kind: str
    query: str
    source: str
    grades: dict[str, float]
    line: int

    @property
    def relevant(self) -> set[str]:
        return {p for p, g in self.grades.items() if g > 0}


def _grades(value: Any) -> dict[str, float]:
    """``relevant`` as ``{product_id: grade}``; raises ValueError saying what was received."""
    expected = 'a list of product ids or an object {"product_id": grade}'
    if isinstance(value, list):
        if not value or not all(isinstance(p, str) and p.strip() for p in value):
            raise ValueError(f'"relevant" must be a non-empty list of non-empty product id strings, got {value!r}')
        if len(set(value)) != len(value):
            raise ValueError(f'"relevant" lists a product twice: {value!r}')
        return {p: 1.0 for p in value}
    if not isinstance(value, dict):
        raise ValueError(f'"relevant" must be {expected}, got {type(value).__name__} {value!r}')
    grades = {}
    for product, grade in value.items():
        if not product.strip():
            raise ValueError('"relevant" has an empty product id')
        if isinstance(grade, bool) or not isinstance(grade, (int, float)) or not math.isfinite(grade) or grade < 0:
            raise ValueError(f'grade of {product!r} must be a finite number >= 0 (0 = judged not relevant), got '
                             f'{grade!r}')
        grades[product] = float(grade)
    if not any(g > 0 for g in grades.values()):
        raise ValueError(f'"relevant" needs at least one grade > 0, got {value!r}')
    return grades


def _image_source(value: str, base: Path) -> str:
    if "://" in value:
        return value
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    return str(path)


def parse_query_line(number: int, line: str, base: Path) -> Query:
    """One line of a query file as a :class:`Query` (image paths resolved against ``base``).

    Raises:
        ValueError: the reason the line is not a query (not JSON, unknown keys, neither or both of text and image,
            an image that does not exist, a bad ``relevant``).
    """
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(QUERY_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; the keys are {list(QUERY_KEYS)}")
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        raise ValueError(f'give exactly one of "text" or "image", got {kinds or "neither"}')
    kind, value = kinds[0], raw[kinds[0]]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'"{kind}" must be a non-empty string, got {value!r}')
    query_id = raw.get("id", f"line{number}")
    if not isinstance(query_id, str) or not query_id.strip():
        raise ValueError(f'"id" must be a non-empty string, got {query_id!r}')
    if "relevant" not in raw:
        raise ValueError('missing "relevant" (a list of product ids or an object {"product_id": grade})')
    source = value if kind == "text" else _image_source(value, base)
    return Query(query_id, kind, value, source, _grades(raw["relevant"]), number)


def parse_queries(text: str, base: Path, name: str = "queries") -> list[Query]:
    """Every query of a JSON Lines text (blank lines skipped), image paths resolved against ``base``.

    Raises:
        QueryFileError: bad lines (all of them listed, up to :data:`MAX_LISTED_ERRORS`, each with its line number
            and reason), a duplicate ``id``, or no query at all.
    """
    queries, errors, seen = [], [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            query = parse_query_line(number, line, base)
            if query.id in seen:
                raise ValueError(f"duplicate id {query.id!r} (first on line {seen[query.id]})")
        except ValueError as e:
            errors.append(f"line {number}: {e}")
            continue
        seen[query.id] = number
        queries.append(query)
    if errors:
        listed = errors[:MAX_LISTED_ERRORS] + ([f"... and {len(errors) - MAX_LISTED_ERRORS} more"]
                                               if len(errors) > MAX_LISTED_ERRORS else [])
        raise QueryFileError(f"{name}: {len(errors)} bad line(s):\n  " + "\n  ".join(listed))
    if not queries:
        raise QueryFileError(f"{name}: no queries (expected JSON Lines, one query per line)")
    return queries


def read_queries(path: str | Path) -> list[Query]:
    """:func:`parse_queries` of a local file, images relative to its folder.

    Raises:
        QueryFileError: the file cannot be read as UTF-8, or has bad lines.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise QueryFileError(f"cannot read query file {path}: {e}") from e
    return parse_queries(text, path.resolve().parent, str(path))


def query_image_bytes(query: Query) -> bytes:
    """The encoded image of an image query (local file or URI, :func:`serve_app.storage.read_bytes`)."""
    try:
        return storage.read_bytes(query.source)
    except storage.StorageError as e:
        raise EvaluationError(f"query {query.id!r} (line {query.line}): cannot read {query.source}: {e}") from e


# --- searching --------------------------------------------------------------------------------------------------

class LocalSearcher:
    """Searches in this process exactly as the service does, with its stage functions: text through
    :meth:`~serve_app.embedding.ClipEmbedder.embed_texts`; photos through
    :func:`~serve_app.query_image.prepare_query_image` (decode, CLIP resize and crop) and
    :meth:`~serve_app.embedding.ClipEmbedder.embed_pixels` (the Encoder's two calls); then the index's
    :meth:`~serve_app.index.base.VectorIndex.search` and :func:`~serve_app.results.hit_results` /
    :func:`~serve_app.results.page` (the Retriever's).

    Args:
        index: index URI (:func:`serve_app.index.open_index`).
        model, runtime, dtype: the embedder (:func:`serve_app.embedding.load_embedder`); ``None`` takes what the index
            records it was embedded with.
        batch_size: queries per forward and per k-NN call.

    Raises:
        IndexOpenError: no index at ``index``. ModelLoadError: the model cannot be loaded.
        EvaluationError: the model's embedding dimension, family or preprocessing is not the index's.
    """

    def __init__(self, index: str, model: str | None = None, runtime: str | None = None, dtype: str | None = None,
                 batch_size: int = 16):
        from serve_app.embedding import load_embedder
        from serve_app.index import open_index
        from serve_app.model_match import mismatch

        self.index = open_index(index)
        stored = self.index.info
        self.embedder = load_embedder(model or stored.model_id, dtype=dtype or stored.dtype,
                                      runtime=runtime or stored.runtime)
        if self.embedder.dim != stored.dim:
            raise EvaluationError(f"index {index} holds {stored.dim}-d embeddings from {stored.model_id!r} but the "
                                  f"model {self.embedder.model_id!r} makes {self.embedder.dim}-d ones")
        reason = mismatch(self.embedder.info(), stored.record() | {"family": stored.family})
        if reason:  # another family, or another preprocessing: what serving would refuse with a 503
            raise EvaluationError(f"index {index}: {reason}")
        if self.embedder.model_id != stored.model_id:
            log.warning("index %s was embedded with %r; evaluating with %r", index, stored.model_id,
                        self.embedder.model_id)
        self.geometry = self.embedder.geometry  # what the ingress prepares photos with (the model family's)
        self.batch_size = batch_size

    def describe(self) -> dict[str, Any]:
        e, info = self.embedder, self.index.info
        return {"mode": "local", "index": self.index.uri, "version": self.index.version,
                "products": self.index.count(), "model_id": e.model_id, "model_weights": e.weights,
                "runtime": e.runtime, "dtype": e.dtype, "index_model_id": info.model_id}

    def _vectors(self, kind: str, queries: Sequence[Query]) -> np.ndarray:
        from serve_app.images import ImageDecodeError
        from serve_app.query_image import prepare_query_image

        if kind == "text":
            return self.embedder.embed_texts([q.source for q in queries])  # [B, D]
        pixels = []
        for q in queries:
            try:
                pixels.append(prepare_query_image(query_image_bytes(q), self.geometry).pixels)  # [3, H, W]
            except ImageDecodeError as e:
                raise EvaluationError(f"query {q.id!r} (line {q.line}): {q.source}: {e}") from e
        return self.embedder.embed_pixels(np.stack(pixels))  # [B, D]

    def search(self, queries: Sequence[Query], k: int) -> list[list[dict[str, Any]]]:
        """Result dicts (``product_id``, ``score``, metadata), best first, ``k`` per query, in query order."""
        from serve_app.results import hit_results, page

        results: list[list[dict[str, Any]]] = [[] for _ in queries]
        for kind in KINDS:
            todo = [i for i, q in enumerate(queries) if q.kind == kind]
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                hits = self.index.search(self._vectors(kind, [queries[i] for i in chunk]), k)
                for i, row in zip(chunk, hits):
                    results[i] = page(hit_results(row), k)
                log.info("%s queries: %d/%d searched", kind, start + len(chunk), len(todo))
        return results

    def close(self) -> None:
        pass


class HttpSearcher:
    """Searches through a running service: ``POST /search/text`` with ``{"query", "k"}`` and ``POST /search/image``
    with the photo as multipart ``file`` and form field ``k``, one request at a time.

    Args:
        url: the service's base URL (``http://host:port``). timeout_s: per request, seconds.
    """

    def __init__(self, url: str, timeout_s: float = 60.0):
        import httpx

        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s)

    def _call(self, what: str, method: str, path: str, **kwargs) -> dict[str, Any]:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise EvaluationError(f"{what}: cannot reach {self.url}{path}: {type(e).__name__}: {e}") from e
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise EvaluationError(f"{what}: {self.url}{path} answered {response.status_code} "
                                  f"{error.get('code', '')}: {error.get('message', response.text[:300])}")
        return body

    def describe(self) -> dict[str, Any]:
        """``/healthz``'s model, weights kind and index (raises EvaluationError when the service is not ready)."""
        health = self._call("health check", "GET", "/healthz")
        return {"mode": "url", "url": self.url} | {key: health.get(key) for key in (
            "index", "products", "model_id", "model_weights", "runtime", "dtype", "index_model_id")}

    def search(self, queries: Sequence[Query], k: int) -> list[list[dict[str, Any]]]:
        """The service's ``results`` per query, in query order."""
        results = []
        for n, q in enumerate(queries, 1):
            what = f"query {q.id!r} (line {q.line})"
            if q.kind == "text":
                body = self._call(what, "POST", "/search/text", json={"query": q.source, "k": k})
            else:
                mime = mimetypes.guess_type(q.source)[0] or "application/octet-stream"
                body = self._call(what, "POST", "/search/image", data={"k": str(k)},
                                  files={"file": (Path(q.source).name, query_image_bytes(q), mime)})
            results.append(body["results"])
            if n % 50 == 0:
                log.info("%d/%d queries searched", n, len(queries))
        return results

    def close(self) -> None:
        self._client.close()


# --- evaluation and reports -------------------------------------------------------------------------------------

def score_queries(queries: Sequence[Query], rankings: Sequence[Sequence[str]], k: int) -> dict[str, Any]:
    """The report: ``queries``, ``k``, ``metrics`` (over all queries), ``by_kind`` (``{"text"|"image": {"queries": n,
    "metrics": {...} or None}}``), ``misses`` (queries whose first relevant product is not at rank 1) and
    ``per_query`` (``id``, ``kind``, ``first_relevant_rank`` or ``None``, its metrics, ``top`` ids).

    Args:
        rankings: product ids per query, best first (at most ``k``), in query order.
    """
    scores = [query_metrics(ranked, q.grades) for q, ranked in zip(queries, rankings, strict=True)]
    by_kind = {}
    for kind in KINDS:
        rows = [s for q, s in zip(queries, scores) if q.kind == kind]
        by_kind[kind] = {"queries": len(rows), "metrics": mean_metrics(rows)}
    per_query = [{"id": q.id, "kind": q.kind, "first_relevant_rank": first_relevant_rank(ranked, q.relevant)}
                 | {m: round(v, 6) for m, v in s.items()} | {"top": list(ranked)}
                 for q, ranked, s in zip(queries, rankings, scores)]
    return {"queries": len(queries), "k": k, "metrics": mean_metrics(scores), "by_kind": by_kind,
            "misses": sum(p["first_relevant_rank"] != 1 for p in per_query), "per_query": per_query}


def evaluate(queries: Sequence[Query], searcher, k: int) -> dict[str, Any]:
    """Search every query with ``searcher`` (:class:`LocalSearcher` or :class:`HttpSearcher`) and score it
    (:func:`score_queries`); ``source`` says what was searched (``searcher.describe()``)."""
    source = searcher.describe()
    results = searcher.search(queries, k)
    return score_queries(queries, [[r["product_id"] for r in rows] for rows in results], k) | {"source": source}


def misses_csv(queries: Sequence[Query], report: Mapping[str, Any]) -> str:
    """CSV of the queries whose first relevant product is not at rank 1: ``query_id``, ``kind``, ``query`` (the text
    or the image path), ``relevant`` (JSON: the list of ids, or the graded object), ``first_relevant_rank`` (empty
    when none is in the top k) and ``top5`` (JSON list of the first five result ids)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["query_id", "kind", "query", "relevant", "first_relevant_rank", "top5"])
    for q, row in zip(queries, report["per_query"], strict=True):
        if row["first_relevant_rank"] != 1:
            graded = any(g != 1.0 for g in q.grades.values())
            writer.writerow([q.id, q.kind, q.query, json.dumps(q.grades if graded else sorted(q.grades)),
                             row["first_relevant_rank"] or "", json.dumps(row["top"][:5])])
    return out.getvalue()


def format_table(report: Mapping[str, Any]) -> str:
    """A small human table of the metrics: one row for all queries, one per kind that has queries."""
    lines = [f"{'':8}{'queries':>8}" + "".join(f"{m:>11}" for m in METRICS)]
    rows = [("all", report["queries"], report["metrics"])]
    rows += [(kind, v["queries"], v["metrics"]) for kind, v in report["by_kind"].items() if v["queries"]]
    for name, count, metrics in rows:
        lines.append(f"{name:8}{count:>8}" + "".join(f"{metrics[m]:>11.3f}" for m in METRICS))
    return "\n".join(lines)


# --- a known-answer query set -----------------------------------------------------------------------------------

def transform_image(image: Image.Image, rng: random.Random) -> tuple[Image.Image, dict[str, float]]:
    """A shopper-like copy of a catalog photo: rotated by 2–5° either way (bicubic, white corners), centre-cropped to
    85–90 % of each side (which hides most of the corners), brightness ×(0.90–0.95 or 1.05–1.10)
    (``PIL.ImageEnhance.Brightness``); the caller re-encodes it as JPEG at :data:`JPEG_QUALITY`.

    Returns:
        The RGB image and the parameters used (``rotate_deg``, ``crop``, ``brightness``).
    """
    angle = rng.choice((-1, 1)) * rng.uniform(2.0, 5.0)
    out = image.convert("RGB").rotate(angle, resample=Image.BICUBIC, fillcolor=(255, 255, 255))
    fraction = rng.uniform(0.85, 0.90)
    width, height = max(1, round(out.width * fraction)), max(1, round(out.height * fraction))
    left, top = (out.width - width) // 2, (out.height - height) // 2
    out = out.crop((left, top, left + width, top + height))
    brightness = 1.0 + rng.choice((-1, 1)) * rng.uniform(0.05, 0.10)
    out = ImageEnhance.Brightness(out).enhance(brightness)
    return out, {"rotate_deg": round(angle, 3), "crop": round(fraction, 4), "brightness": round(brightness, 4)}


def make_query_set(rows: Iterable[Mapping[str, Any]], out_dir: str | Path, seed: int = 0,
                   limit: int | None = None) -> dict[str, Any]:
    """Write a known-answer image query set: for each catalog row, a :func:`transform_image` copy of its image as
    ``q<NNNN>.jpg`` (JPEG quality :data:`JPEG_QUALITY`) in ``out_dir``, and ``out_dir/queries.jsonl`` with one line
    per copy: ``{"id", "image": "q<NNNN>.jpg", "relevant": [the row's product_id], "meta": {"source", transform}}``.

    The source image is decoded with :func:`serve_app.images.decode_image` (EXIF orientation, transparency onto
    white), as ingestion and the service do. Rows with the same ``product_id`` keep the last one (as ingestion's
    upsert does); rows whose image cannot be read or decoded are skipped and listed.

    Args:
        rows: catalog rows with ``product_id`` and ``image`` (a path or URI, as in a read manifest).
        seed: the random choice of rows (with ``limit``) and of each transform's parameters.
        limit: at most this many queries, a seeded sample of the rows kept in catalog order.

    Returns:
        ``{"queries": path of queries.jsonl, "count": n, "skipped": [{"product_id", "image", "reason"}]}``.
    """
    from serve_app.images import ImageDecodeError, decode_image

    rng = random.Random(seed)
    latest = {str(r["product_id"]): str(r["image"]) for r in rows}
    chosen = list(latest.items())
    if limit is not None and limit < len(chosen):
        chosen = [chosen[i] for i in sorted(rng.sample(range(len(chosen)), limit))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines, skipped = [], []
    for product_id, uri in chosen:
        try:
            image = decode_image(storage.read_bytes(uri))
        except (storage.StorageError, ImageDecodeError) as e:
            skipped.append({"product_id": product_id, "image": uri, "reason": f"{type(e).__name__}: {e}"})
            continue
        query_id = f"q{len(lines) + 1:04d}"
        copy, params = transform_image(image, rng)
        copy.save(out / f"{query_id}.jpg", "JPEG", quality=JPEG_QUALITY)
        lines.append(json.dumps({"id": query_id, "image": f"{query_id}.jpg", "relevant": [product_id],
                                 "meta": {"source": uri} | params | {"jpeg_quality": JPEG_QUALITY}}))
    path = out / QUERIES_FILE
    path.write_text("".join(line + "\n" for line in lines))
    return {"queries": str(path), "count": len(lines), "skipped": skipped}
