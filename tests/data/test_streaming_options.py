"""The streaming cache's settings: the forms --cache-limit takes, and the advice on the shuffle window."""

from __future__ import annotations

import pytest

from w2v.data.streaming import S3_REQUEST_BOUNDS, CacheLimit, bounded_requests, parse_cache_limit, window_advice
from w2v.errors import W2VError


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("auto", CacheLimit()),
        ("10%", CacheLimit(share=0.1)),
        ("2.5%", CacheLimit(share=0.025)),
        ("500G", CacheLimit(bytes=500 * 10**9)),
        ("2.5TB", CacheLimit(bytes=2_500 * 10**9)),
        ("1GiB", CacheLimit(bytes=2**30)),
        ("800000000", CacheLimit(bytes=800_000_000)),
        ("64 mb", CacheLimit(bytes=64 * 10**6)),
    ],
)
def test_a_cache_limit_is_bytes_a_share_of_the_free_disk_or_auto(text: str, limit: CacheLimit) -> None:
    assert parse_cache_limit(text) == limit


@pytest.mark.parametrize("text", ["lots", "0", "0%", "150%", "-5G", "5 parsecs"])
def test_a_cache_limit_that_is_none_of_those_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(W2VError, match=rf"--cache-limit {text}: ") as error:
        parse_cache_limit(text)
    assert "\n" not in str(error.value)


def test_auto_takes_the_corpus_when_it_fits_in_half_the_free_disk_else_half_the_disk() -> None:
    assert CacheLimit().resolve(free_bytes=1000, corpus_bytes=300) == 300
    assert CacheLimit().resolve(free_bytes=1000, corpus_bytes=3000) == 500
    assert CacheLimit(share=0.1).resolve(free_bytes=1000, corpus_bytes=3000) == 100
    assert CacheLimit(bytes=42).resolve(free_bytes=1000, corpus_bytes=3000) == 42


def test_the_window_advice_asks_for_two_windows_in_the_cache() -> None:
    shards = [100] * 50
    assert window_advice(5000, shards, None) is None  # the whole corpus fits: nothing to say
    assert window_advice(1000, shards, 5) is None  # room for two windows of 5
    full = window_advice(1000, shards, None)
    assert full is not None and "a full shuffle" in full and "shuffle_window_shards to at most 5" in full
    wide = window_advice(1000, shards, 8)
    assert wide is not None and "not two windows of 8 shards" in wide and "at most 5" in wide
    tiny = window_advice(150, shards, 1)
    assert tiny is not None and "raise --cache-limit to at least 200 bytes" in tiny


def test_s3_calls_are_bounded_in_time_unless_the_user_configured_them() -> None:
    bounded = bounded_requests("s3://bucket/corpus", {"endpoint_url": "http://127.0.0.1:9000"})
    assert bounded == {"endpoint_url": "http://127.0.0.1:9000", "config_kwargs": S3_REQUEST_BOUNDS}
    assert S3_REQUEST_BOUNDS["connect_timeout"] <= 10 and S3_REQUEST_BOUNDS["read_timeout"] <= 60
    mine = {"config_kwargs": {"connect_timeout": 3}}
    assert bounded_requests("s3://bucket/corpus", mine) == mine
    assert bounded_requests("gs://bucket/corpus", None) == {}  # other stores keep their own defaults
