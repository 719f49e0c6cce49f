"""Hard filters of the public contract: validation and the neutral form backends translate (no Ray import).

Contract (DESIGN.md): ``{"field": value | [values], "numeric_field": {"gte": x, "lte": y}}``. Keyword
fields take equality or any-of; numeric fields take a range with ``gt``/``gte``/``lt``/``lte`` (or an exact
number). Clauses are ANDed. The filter is applied **inside** the k-NN search by each backend.
"""

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

KEYWORD_FIELDS = ("product_id", "category", "brand")
NUMERIC_FIELDS = ("price",)
RANGE_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
MAX_VALUES = 1000


class FilterError(ValueError):
    """A filter names an unknown field or has a value of the wrong type; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"filter on {field!r}: {message}")
        self.field, self.reason = field, message

    def __reduce__(self):  # keep it picklable across Ray processes
        return FilterError, (self.field, self.reason)


@dataclass(frozen=True)
class Clause:
    """One validated clause: ``field IN values`` or ``field op number`` for each range bound."""

    field: str
    values: tuple[str, ...] = ()
    ranges: tuple[tuple[str, float], ...] = ()


def parse_filters(filters: dict[str, Any] | None) -> list[Clause]:
    """Validate a contract filter object.

    Returns:
        The clauses, in the object's order (empty list for ``None``/``{}``).

    Raises:
        FilterError: unknown field (the message lists the valid ones), wrong value type, empty list,
            unknown range operator or a non-finite number.
    """
    if not filters:
        return []
    if not isinstance(filters, dict):
        raise FilterError("filters", f"expected a JSON object, got {type(filters).__name__}")
    clauses = []
    for field, value in filters.items():
        if field in KEYWORD_FIELDS:
            clauses.append(_keyword_clause(field, value))
        elif field in NUMERIC_FIELDS:
            clauses.append(_numeric_clause(field, value))
        else:
            raise FilterError(field, f"unknown field; filterable fields are {sorted(KEYWORD_FIELDS + NUMERIC_FIELDS)}")
    return clauses


def _keyword_clause(field: str, value: Any) -> Clause:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise FilterError(field, "empty list: give at least one value")
    if len(values) > MAX_VALUES:
        raise FilterError(field, f"{len(values)} values; at most {MAX_VALUES}")
    for v in values:
        if not isinstance(v, str):
            raise FilterError(field, f"expected a string or a list of strings, got {v!r}")
    return Clause(field, values=tuple(values))


def _number(field: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise FilterError(field, f"expected a finite number, got {v!r}")
    return float(v)


def _numeric_clause(field: str, value: Any) -> Clause:
    if isinstance(value, dict):
        if not value:
            raise FilterError(field, "empty range: use gt, gte, lt or lte")
        ranges = []
        for op, bound in value.items():
            if op not in RANGE_OPS:
                raise FilterError(field, f"unknown range operator {op!r}; expected one of {list(RANGE_OPS)}")
            ranges.append((op, _number(field, bound)))
        return Clause(field, ranges=tuple(ranges))
    number = _number(field, value)
    return Clause(field, ranges=(("gte", number), ("lte", number)))


def sql_string(s: str) -> str:
    """A SQL string literal: single quotes doubled."""
    return "'" + s.replace("'", "''") + "'"


def to_sql(clauses: list[Clause]) -> str | None:
    """Translate clauses to a DataFusion SQL predicate (LanceDB's ``where``); ``None`` when empty."""
    parts = []
    for c in clauses:
        if c.values:
            parts.append(f"{c.field} IN ({', '.join(sql_string(v) for v in c.values)})")
        for op, bound in c.ranges:
            parts.append(f"{c.field} {RANGE_OPS[op]} {bound!r}")
    return " AND ".join(parts) if parts else None


_OPERATORS = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}


def to_mask(clauses: list[Clause], columns: dict[str, np.ndarray]) -> np.ndarray:
    """Evaluate clauses over in-memory columns, as :func:`to_sql` would in a database: keyword columns are
    object arrays (``None`` for null, never equal to a value), numeric columns float arrays (NaN for null,
    never within a range). Returns a bool ``(N,)`` mask."""
    n = len(next(iter(columns.values())))
    mask = np.ones(n, dtype=bool)
    for c in clauses:
        column = columns[c.field]
        if c.values:
            mask &= np.isin(column, np.asarray(c.values, dtype=object))
        for op, bound in c.ranges:
            with np.errstate(invalid="ignore"):
                mask &= _OPERATORS[op](column, bound)  # NaN compares False
    return mask
