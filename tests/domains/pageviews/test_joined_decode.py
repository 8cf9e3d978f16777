"""Many page views decoded in one msgspec call give exactly the verdicts of one call per
record, whatever the records hold (pure logic, no servers)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from clickflow.domains.pageviews.events import (
    GROUP,
    InvalidEvent,
    PageViewEvent,
    check_page_view,
    decode_page_view,
    decode_page_views,
)
from tests.hostile_text import hostile_text

from .test_validation import GOOD, NOW

Verdict = tuple[PageViewEvent, float] | str


def alone(raw: bytes) -> Verdict:
    """The one-by-one verdict on a record: its event and time, or its DLQ reason."""
    try:
        return decode_page_view(raw, NOW)
    except InvalidEvent as e:
        return str(e)


def joined(raw: bytes, ev: PageViewEvent | None) -> Verdict:
    """The pipeline's verdict given the joined decode's answer for the record."""
    if ev is None:
        return alone(raw)
    try:
        return ev, check_page_view(ev, NOW)
    except InvalidEvent as e:
        return str(e)


def assert_same_verdicts(raws: list[bytes]) -> None:
    events = decode_page_views(raws)
    assert len(events) == len(raws)
    for raw, ev in zip(raws, events, strict=True):
        assert joined(raw, ev) == alone(raw), raw


def good(**change: object) -> bytes:
    return orjson.dumps({**GOOD, **change})


HEAD = good()[:-1]  # a good event without its closing brace


# Records that are invalid alone but whose bytes, joined, spell valid events: a string
# opened in one record and closed in the next, an object split across two records (the
# count made up by a record holding two events), the same through an array of an unknown
# field, and a record that ends where the next one's fields go on.
SEAMS = [
    [HEAD + b',"x":"', b'",' + good()[1:], good()],
    [HEAD, b'"x":1}', good() + b"," + good()],
    [HEAD + b',"x":[{}', b"{}]}", good()],
    [HEAD + b',"x":{"a":1}', b'{"b":2}}', good() + b"\n," + good()],
    [HEAD + b',"x":"}', b'{"}', good() + b"," + good()],
    [good() + b"," + good(), HEAD],
    [good() + b"\n," + good(), good()],
    [good() + b"]", b"[" + good()],
]


@pytest.mark.parametrize("raws", SEAMS)
def test_records_cut_across_their_edges_are_decoded_alone(raws: list[bytes]) -> None:
    assert isinstance(alone(raws[0]), str)
    assert all(ev is None for ev in decode_page_views(raws))


def test_one_bad_record_sends_only_its_group_to_the_one_by_one_decode() -> None:
    raws = [good(user_id=f"u{i}") for i in range(3 * GROUP)]
    raws[GROUP + 7] = good(view_duration_ms=-1)
    events = decode_page_views(raws)
    assert [i for i, ev in enumerate(events) if ev is None] == list(range(GROUP, 2 * GROUP))
    assert_same_verdicts(raws)


def test_a_record_holding_a_bracket_is_decoded_alone_and_the_others_together() -> None:
    raws = [good(user_id=f"u{i}") for i in range(10)]
    raws[3] = good(user_agent="Mozilla/5.0 [FBAN/FBIOS]")
    events = decode_page_views(raws)
    assert [i for i, ev in enumerate(events) if ev is None] == [3]
    assert events[4] is not None
    assert (events[4], check_page_view(events[4], NOW)) == alone(raws[4])


def record_text() -> st.SearchStrategy[bytes]:
    """Whole events with hostile fields, pieces of events, and JSON punctuation."""
    whole = st.fixed_dictionaries(
        {
            "page_id": hostile_text(40, min_size=0),
            "user_id": hostile_text(40, min_size=0),
            "view_duration_ms": st.integers(-5, 10**9),
            "timestamp": st.sampled_from(
                ["2026-11-18T08:00:00Z", "2026-11-18T08:00:00", "1999-01-01T00:00:00Z", "x"]
            ),
            "is_bounce": st.booleans(),
        },
        optional={"x": st.sampled_from(["", "}", '"', "\n,{", "[", "],{"]), "region": st.text()},
    ).map(orjson.dumps)
    punctuation = st.lists(
        st.sampled_from([b"{", b"}", b"[", b"]", b",", b"\n", b'"', b":", b'"x"', b"1", b" "]),
        max_size=6,
    ).map(b"".join)
    pieces = st.tuples(whole, st.integers(0, 400), st.integers(0, 400)).map(
        lambda t: t[0][min(t[1], t[2]) : max(t[1], t[2])]
    )
    return st.one_of(whole, whole, pieces, punctuation, st.binary(max_size=20))


@hsettings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(record_text(), min_size=1, max_size=12))
def test_joined_verdicts_are_the_one_by_one_verdicts(raws: list[bytes]) -> None:
    assert_same_verdicts(raws)


@hsettings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(record_text(), record_text()), min_size=1, max_size=6))
def test_concatenated_halves_decode_the_same(pairs: list[tuple[bytes, bytes]]) -> None:
    # Pairs of fragments glued together: the likeliest way to spell a seam on purpose.
    assert_same_verdicts([a + b for a, b in pairs] + [a for a, _ in pairs])
