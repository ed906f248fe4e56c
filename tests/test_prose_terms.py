"""find_terms and rules.forbidden answer as they did term by term, with a look-up of the text's
words first (issue 24, item 1)."""

from __future__ import annotations

import random
import re

from cloops.core import prose


def _one_by_one(text: str, terms: list[str]) -> list[str]:
    found: list[str] = []
    for term in terms:
        body = r"\s+".join(re.escape(p) for p in term.split())
        for m in re.finditer(rf"(?<![\w-])({body}(?:e?s)?)(?![\w-])", text, re.IGNORECASE):
            if m.group(1) not in found:
                found.append(m.group(1))
    return found


def test_find_terms_matches_the_term_by_term_search():
    terms = prose.lexicon("sign\nbanner\nspeech bubble\nletter # drawn letters\ntext\nbox\n")
    words = ["A", "sign", "signs", "Signage", "banner", "BANNERS", "speech", "bubble",
             "bubbles", "letters", "re-sign", "text,", "boxes", "box-like", "the", "ark", "\n"]
    rng = random.Random(24)
    for _ in range(500):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        assert prose.find_terms(text, terms) == _one_by_one(text, terms), text
    assert prose.find_terms("anything", []) == []


# the look-up rules out a term only for ASCII text and plain terms: the rest goes to the pattern
_TRICKY_WORDS = ["A", "sign", "Signs", "ſign", "SIGN’s", "\u212aey", "sıgn", "Sİgn", "İ", "—sign",
                 "sign—", "Straße", "Ǆ", "_sign", "sign_", "re-sign", "o'clock",
                 "O'Clock", "Café", "cafe", "café's", "speech", "Bubble", "bubbles", "box-like",
                 "boxes", "t-shirt", "shirt", "\n", "\t", "—", "x2", "2x"]
_TRICKY_TERMS = ["key", "sign", "speech bubble", "o'clock", "café", "cafe", "shirt", "t-shirt", "box",
                 "_sign", "x2", " padded ", "2x"]


def test_find_terms_matches_the_term_by_term_search_on_any_text():
    rng = random.Random(2412)
    for _ in range(2000):
        text = " ".join(rng.choice(_TRICKY_WORDS) for _ in range(rng.randint(0, 10)))
        terms = rng.sample(_TRICKY_TERMS, rng.randint(1, 5))
        assert prose.find_terms(text, terms) == _one_by_one(text, terms), (text, terms)


def test_forbidden_matches_the_word_by_word_search():
    from cloops.data.rules import forbidden

    def reference(text: str, forbid: list[str]) -> list[str]:
        found: list[str] = []
        for w in forbid:
            body = r"\s+".join(map(re.escape, w.split()))
            rx = re.compile(w[1:-1] if len(w) > 2 and w[0] == w[-1] == "/"
                            else rf"(?<![\w-]){body}(?![\w-])", re.I)
            m = rx.search(text)
            if m and m.group(0) not in found:
                found.append(m.group(0))
        return found
    rng = random.Random(1164)
    for _ in range(2000):
        text = " ".join(rng.choice(_TRICKY_WORDS) for _ in range(rng.randint(0, 10)))
        forbid = rng.sample(_TRICKY_TERMS + ["/sig?n/", "/^a/"], rng.randint(1, 5))
        assert forbidden(text, forbid) == reference(text, forbid), (text, forbid)


def test_only_the_listed_characters_fold_to_ascii():
    """tokens() tokenizes non-ASCII text unless it holds one of _FOLDS_TO_ASCII: no other
    code point matches an ASCII word character in any case, none but U+0130 grows when
    lower-cased, and lower-casing never moves a boundary of a run of [\\w-]."""
    ascii_word = re.compile(r"[a-z0-9_-]", re.I)
    word = re.compile(r"[\w-]")
    folds, grows, moves = set(), set(), set()
    for c in map(chr, range(128, 0x110000)):
        if ascii_word.fullmatch(c):
            folds.add(c)
        low = c.lower()
        if len(low) != 1:
            grows.add(c)
        if bool(word.fullmatch(c)) != all(word.fullmatch(x) for x in low):
            moves.add(c)
    assert folds == set(prose._FOLDS_TO_ASCII)
    assert grows <= folds and moves <= folds
    assert prose.tokens("Panel 1 — a Sign") == frozenset({"panel", "1", "a", "sign"})
    assert prose.tokens("the \u212aey") is None
