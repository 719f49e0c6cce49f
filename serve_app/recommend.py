"""More like this: a query vector from stored product embeddings, positive and negative (no Ray import).

The rule is Qdrant's ``average_vector`` recommendation strategy (Qdrant docs, "Explore the data" →
Recommendation API; ``RecommendStrategy.AverageVector``): ``q = avg(pos) + (avg(pos) − avg(neg))``, i.e.
``2·avg(pos) − avg(neg)``, and ``q = avg(pos)`` without negatives, then L2-normalised so scores stay cosines.
One positive and no negative is exactly a search by that product's stored vector. The input products
themselves are never results (:func:`without_products`).
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from serve_app.thumbnails import ProductNotFound


class RecommendError(ValueError):
    """The examples give no query (HTTP 422)."""


class UnknownProducts(ProductNotFound):
    """Product ids that are not in the index (HTTP 404 naming them)."""

    def __init__(self, product_ids: Sequence[str]):
        self.product_ids = list(product_ids)
        super().__init__(self.product_ids)  # the args rebuild it when Ray re-raises it in the caller

    def __str__(self) -> str:
        return f"unknown product ids: {', '.join(map(repr, self.product_ids))}"


def recommend_vector(stored: Mapping[str, np.ndarray], positive: Sequence[str],
                     negative: Sequence[str] = ()) -> np.ndarray:
    """The query vector for ``positive`` and ``negative`` product ids.

    Args:
        stored: product id → its stored L2-normalised embedding, float32 ``(D,)``.
        positive: at least one product id to look like. negative: product ids to look unlike.

    Returns:
        float32 ``(1, D)``, L2-normalised.

    Raises:
        RecommendError: no positive id, or the examples cancel out. UnknownProducts: ids missing from ``stored`` (all of them named).
    """
    if not positive:
        raise RecommendError("give at least one positive product id")
    missing = [p for p in dict.fromkeys([*positive, *negative]) if p not in stored]
    if missing:
        raise UnknownProducts(missing)
    query = np.mean([stored[p] for p in positive], axis=0, dtype=np.float64)
    if negative:
        query = 2 * query - np.mean([stored[n] for n in negative], axis=0, dtype=np.float64)
    norm = np.linalg.norm(query)
    if norm < 1e-12:  # e.g. the same product as positive and negative
        raise RecommendError("the positive and negative examples cancel out: no direction left to search")
    return (query / norm).astype(np.float32)[None, :]


def without_products(results: Iterable[dict[str, Any]], product_ids: Iterable[str]) -> list[dict[str, Any]]:
    """``results`` minus those whose ``product_id`` is one of ``product_ids``, order kept."""
    drop = set(product_ids)
    return [r for r in results if r["product_id"] not in drop]
