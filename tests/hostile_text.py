"""Hypothesis strategies for text a hostile or careless client can put in any string field.

Every pipeline's property tests draw their text fields from :func:`hostile_text`: whitespace
and control characters (NUL included), lone surrogates (JSON can escape them; most encoders
refuse them, so they come as escaped JSON text, see :func:`json_with_escapes`), right-to-left
marks, 4-byte characters, text at the field's maximum length, and text that looks like SQL,
Lua, Redis commands, Redis key prefixes of clickflow itself, or its claim-line format.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

#: Fragments that look like the protocols and key namespaces text must never be spliced into.
LOOKALIKES = [
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\x00",
    "a\x00b",
    "\x1b[31m",
    "\u200f",  # right-to-left mark
    "\u202e",  # right-to-left override
    "\ufeff",
    "😀",
    "𝕏",
    "x pv:pending",
    "x pv:sweep",
    "pv:",
    "pv:ugc-seen:",
    "pv:claims:",
    "ugc-seen:k",
    "k.anonymous",
    "claim owner\n",
    "a b\nc d\n",
    "%S+",
    "'; DROP TABLE page_views_raw; --",
    "1' OR '1'='1",
    "{x:String}",
    "\\N",
    "redis.call('FLUSHALL')",
    "]] .. redis.call('DEL', KEYS[1]) .. [[",
    "*",
    "{hash}",
]

_chars = st.characters(
    blacklist_categories=("Cs",),  # lone surrogates cannot be encoded as UTF-8
)
_controls = st.sampled_from([chr(c) for c in range(0x20)] + ["\x7f", "\u2028", "\u2029"])


def hostile_text(max_size: int = 64, min_size: int = 0) -> st.SearchStrategy[str]:
    """Text built from look-alike fragments, control characters and any Unicode."""
    piece = st.one_of(
        st.sampled_from(LOOKALIKES), _controls, st.text(_chars, max_size=8), st.just("é")
    )
    built = st.lists(piece, max_size=6).map("".join)
    at_limit = st.text(_chars, min_size=max_size, max_size=max_size)
    return (
        st.one_of(built, at_limit).map(lambda s: s[:max_size]).filter(lambda s: len(s) >= min_size)
    )


def json_with_escapes(value: object, surrogate: bool = False) -> bytes:
    """``value`` as JSON; with ``surrogate``, a lone surrogate escape appended to its first
    string field's end (valid JSON text that many decoders reject or mangle)."""
    text = json.dumps(value, ensure_ascii=True)
    if surrogate:
        i = text.find('": "')
        if i >= 0:
            j = text.find('"', i + 4)
            text = text[:j] + "\\ud800" + text[j:]
    return text.encode()
