"""find_terms answers as it did term by term, with one search first (issue 24, item 1)."""

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
