"""Stable ids: a problem's id is a hash of its normalized prompt (unless the source gives one);
a trace's id is a hash of what identifies the request that produced it."""

from __future__ import annotations

import hashlib
import unicodedata


def normalize_text(text: str) -> str:
    """NFKC, whitespace collapsed to single spaces, stripped. Case is kept."""
    # str.split() with no argument splits on the same whitespace as the regex \s+, ~10x faster
    return " ".join(unicodedata.normalize("NFKC", text).split())


def short_hash(*parts: object, length: int = 16) -> str:
    """Hex digest of the parts joined by NUL; equal parts give equal hashes across runs."""
    digest = hashlib.sha256("\x00".join("" if p is None else str(p) for p in parts).encode())
    return digest.hexdigest()[:length]


def problem_id(prompt: str) -> str:
    return "p-" + short_hash(normalize_text(prompt))


def trace_id(problem: str, model: str | None, round_: int, sample_index: int) -> str:
    return "t-" + short_hash(problem, model, round_, sample_index)
