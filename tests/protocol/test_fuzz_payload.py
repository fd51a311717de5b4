"""Property tests for the data checks every door applies (``pushgate.payload``): the bracket count
agrees with a real parse, and ``check_data`` accepts exactly UTF-8 JSON within the depth limit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushgate.errors import ClientError
from pushgate.payload import check_data, check_json, json_depth

from .strategies import depth, json_texts, nested

BOUNDED = settings(max_examples=200, deadline=None, database=None)


@BOUNDED
@given(json_texts())
def test_depth_agrees_with_a_parse(case: tuple[Any, bytes]) -> None:
    value, data = case
    assert json_depth(data) == depth(value) == depth(json.loads(data))


@BOUNDED
@given(nested())
def test_depth_of_deep_mixed_nesting(case: tuple[int, bytes]) -> None:
    n, data = case
    assert depth(json.loads(data)) == n  # the generator is right...
    assert json_depth(data) == n  # ...and so is the count


@BOUNDED
@given(nested(max_depth=80), st.integers(min_value=1, max_value=64))
def test_check_data_accepts_exactly_what_fits(case: tuple[int, bytes], max_depth: int) -> None:
    n, data = case
    if n <= max_depth:
        assert check_data(data, max_depth=max_depth) is data
        assert check_json(data, max_depth=max_depth) is data
    else:
        for check in (check_data, check_json):
            with pytest.raises(ClientError) as info:
                check(data, max_depth=max_depth)
            assert info.value.code == "bad_request"


@BOUNDED
@given(json_texts(), st.binary(min_size=1, max_size=4).filter(lambda b: not _utf8(b)), st.data())
def test_invalid_utf8_anywhere_is_refused(case: tuple[Any, bytes], bad: bytes, data: st.DataObject) -> None:
    _, text = case
    at = data.draw(st.integers(min_value=0, max_value=len(text)))
    spoiled = text[:at] + bad + text[at:]
    if _utf8(spoiled):  # the bad bytes completed a character next to them: still valid
        return
    with pytest.raises(ClientError) as info:
        check_data(spoiled)
    assert info.value.code == "bad_request"


@BOUNDED
@given(st.binary(max_size=300))
def test_any_bytes_are_accepted_or_refused_never_crash(data: bytes) -> None:
    for check in (check_data, check_json):
        try:
            assert check(data) is data
        except ClientError as exc:
            assert exc.code == "bad_request"


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
