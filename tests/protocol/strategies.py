"""Hypothesis strategies shared by the property tests: JSON values and their texts."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

#: Text that is valid UTF-8 (no lone surrogates), brackets and quotes well represented, since
#: they are what depth counting and string skipping must get right.
text = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('[]{}"\\'), max_size=12)

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | text)

json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=25,
)


def depth(value: Any) -> int:
    """The reference: how deeply arrays and objects nest in a parsed JSON value."""
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@st.composite
def json_texts(draw: st.DrawFn, values: st.SearchStrategy[Any] = json_values) -> tuple[Any, bytes]:
    """A JSON value and one of its many spellings (compact or spaced, escaped or raw UTF-8)."""
    value = draw(values)
    indent = draw(st.sampled_from([None, 0, 2]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" , ", " :\t")]))
    encoded = json.dumps(value, indent=indent, separators=separators, ensure_ascii=draw(st.booleans()))
    return value, encoded.encode()


@st.composite
def nested(draw: st.DrawFn, max_depth: int = 120) -> tuple[int, bytes]:
    """Arrays and objects nested exactly ``n`` deep, mixed, with bracket-laden strings beside them.

    Drawn as a few numbers (a depth, a bit mask of kinds, two strings) rather than per level, so
    a deep example costs no more to generate than a shallow one."""
    n = draw(st.integers(min_value=0, max_value=max_depth))
    kinds = draw(st.integers(min_value=0, max_value=(1 << n) - 1)) if n else 0
    inner = json.dumps(draw(text)).encode()
    decoy = json.dumps(draw(text)).encode()
    for level in range(n):
        if kinds >> level & 1:
            inner = b"[" + decoy + b"," + inner + b"]"
        else:
            inner = b'{"k":' + inner + b',"s":' + decoy + b"}"
    return n, inner
