"""Request-layer bounds agree with the app's configured max_k (issue 23, item 6)."""

import pytest
from pydantic import ValidationError

from serve_app.config import AppArgs
from serve_app.errors import ApiError
from serve_app.request_params import MAX_K, SimilarQuery, TextQuery, check_page
from serve_app.soft_filter import pool_size


def test_a_configured_max_k_above_1000_is_what_requests_are_held_to():
    args = AppArgs(max_k=5000)
    query = TextQuery(query="a red apple", k=3000, offset=2000)  # the field bounds admit the configured depth
    check_page(query.k, query.offset, args.max_k)
    SimilarQuery(positive=["p1"], k=5000)
    with pytest.raises(ApiError) as refused:
        check_page(query.k, query.offset + 1, args.max_k)
    assert refused.value.status == 422 and "5000" in refused.value.message
    with pytest.raises(ApiError):  # the default depth still refuses the same page
        check_page(query.k, query.offset, AppArgs().max_k)


def test_the_request_ceiling_and_the_config_ceiling_are_the_same_number():
    AppArgs(max_k=MAX_K)
    with pytest.raises(ValidationError):
        AppArgs(max_k=MAX_K + 1)
    with pytest.raises(ValidationError):
        TextQuery(query="a", k=MAX_K + 1)


@pytest.mark.parametrize("n", [1, 10, 250, 999, 1000, 1001, 4000, MAX_K])
def test_the_soft_filter_pool_is_never_shallower_than_the_page(n):
    assert n <= pool_size(n) <= max(n, 1000)
