"""Caption cues: narration cut into timed pieces that fit the caption box, and their
WebVTT and SubRip files.

Layer: **services**.

A cue is at most as long as fits the caption box (three lines at the caption size, see
:mod:`cloops.services.media.clips`); sentences stay whole when they fit, and a cue is shown for a share
of its page's narration time proportional to its length in characters - the time a viewer
needs to read it (and, with a voice track, about the time the voice takes to say it).

Formats: WebVTT per the W3C WebVTT spec (``WEBVTT`` header, ``HH:MM:SS.mmm``, ``&``/``<``/``>``
escaped); SubRip as commonly read (numbered cues, ``HH:MM:SS,mmm``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass(frozen=True)
class Cue:
    """One caption: shown from ``start_s`` to ``end_s`` (seconds from the clip's start).

    ``lines`` is the text as wrapped for the caption box (also the line breaks written to
    the VTT/SRT files).
    """

    start_s: float
    end_s: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def _balanced(words: list[str], parts: int) -> list[str]:
    """Cut ``words`` into ``parts`` runs of about equal length in characters."""
    total = sum(len(w) + 1 for w in words)
    out: list[str] = []
    run: list[str] = []
    acc = 0
    for i, word in enumerate(words):
        run.append(word)
        acc += len(word) + 1
        cut = len(out) + 1
        if cut < parts and acc >= total * cut / parts and len(words) - i - 1 >= parts - cut:
            out.append(" ".join(run))
            run = []
    if run:
        out.append(" ".join(run))
    return out


def chunk(text: str, fits: Callable[[str], bool]) -> list[str]:
    """Cut ``text`` into pieces each of which ``fits``, keeping sentences together when they
    fit and joining short sentences.

    A sentence that does not fit alone is cut between words into as few pieces of about equal
    length as fit (not a full piece and a stub); a single word that fits nowhere becomes its
    own piece (the caller's layout breaks it).
    """
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(" ".join(text.split())):
        if not sentence:
            continue
        joined = f"{current} {sentence}" if current else sentence
        if fits(joined):
            current = joined
            continue
        if current:
            pieces.append(current)
            current = ""
        if fits(sentence):
            current = sentence
            continue
        words = sentence.split(" ")
        for parts in range(2, len(words) + 1):
            split = _balanced(words, parts)
            if all(fits(p) for p in split):
                pieces.extend(split[:-1])
                current = split[-1]
                break
        else:
            pieces.extend(words[:-1])
            current = words[-1]
    if current:
        pieces.append(current)
    return pieces


def time_cues(pieces: list[tuple[str, ...]], start_s: float, end_s: float) -> list[Cue]:
    """Spread ``pieces`` (each a tuple of wrapped lines) over ``[start_s, end_s]`` in
    proportion to their length; times are rounded to the millisecond."""
    if not pieces or end_s <= start_s:
        return []
    weights = [sum(len(ln) for ln in p) + 1 for p in pieces]
    total = sum(weights)
    cues = []
    t = start_s
    acc = 0
    for piece, wgt in zip(pieces, weights):
        acc += wgt
        end = start_s + (end_s - start_s) * acc / total
        cues.append(Cue(round(t, 3), round(end, 3), piece))
        t = end
    return cues


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_vtt(cues: Iterable[Cue]) -> str:
    """Return the cues as a WebVTT file (UTF-8 text)."""
    out = ["WEBVTT", ""]
    for i, cue in enumerate(cues, start=1):
        text = "\n".join(ln.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                         for ln in cue.lines)
        out += [str(i), f"{_stamp(cue.start_s, '.')} --> {_stamp(cue.end_s, '.')}", text, ""]
    return "\n".join(out)


def to_srt(cues: Iterable[Cue]) -> str:
    """Return the cues as a SubRip (.srt) file (UTF-8 text)."""
    out = []
    for i, cue in enumerate(cues, start=1):
        out += [str(i), f"{_stamp(cue.start_s, ',')} --> {_stamp(cue.end_s, ',')}",
                "\n".join(cue.lines), ""]
    return "\n".join(out)
