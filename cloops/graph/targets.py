"""Writing targets without losing anything a person wrote.

Layer: **graph**.

Every story folder has ``.cloops/manifest.json``: for each target, the SHA-256 of the bytes
cloops last wrote and what made them (backend, model, offline or not). A target whose bytes
differ from that record was edited by hand. A write appends its record to
``.cloops/manifest.log`` (one JSON line; :func:`read_manifest` applies the lines over the
file) instead of rewriting the whole manifest: a rename costs ~2 ms of a task's time on this
machine's disk, an append ~0.02 ms. Every :data:`JOURNAL_LINES` lines the manifest is written
whole and the log removed. A kill leaves at worst a torn last line, which is ignored: that
target then looks edited by hand, as it did when a kill fell between the target's rename and
the manifest's. Before any target is overwritten, its previous
version — hand edit, generated or restored — is copied to
``.cloops/history/<target>/<stamp>-<why><ext>`` (:func:`list_versions` reads them back), and the
build output says so. ``doit restore`` puts a version back as an edit: it is recorded in
``.cloops/restored.json``, never in the manifest, so the build treats it as a hand edit.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..core.fileio import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file

META_DIR = ".cloops"
MANIFEST_FILE = "manifest.json"
JOURNAL_FILE = "manifest.log"  # records appended since manifest.json was last written whole
JOURNAL_LINES = 64  # appended records after which the manifest is written whole again
RESTORED_FILE = "restored.json"
REASONS = ("hand-edit", "generated", "restored")
_tlock = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}


@contextmanager
def story_lock(story_dir: Path) -> Iterator[None]:
    """Exclusive lock on a story's manifest across threads and processes."""
    meta = story_dir / META_DIR
    with _tlock:
        tl = _thread_locks.setdefault(str(meta), threading.Lock())
    with tl:
        lock_file = meta / "manifest.lock"
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(lock_file, flags, 0o666)
        except FileNotFoundError:  # the story's first lock
            meta.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_file, flags, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor is closed
            yield
        finally:
            os.close(fd)


def read_manifest(story_dir: Path) -> dict[str, dict]:
    """``{rel: {"sha256", "madeBy", "offline", "at", "source"?}}``: what cloops last wrote of
    each target of the story (``manifest.json`` with the journal's records applied)."""
    return _read_manifest(story_dir)[0]


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _identity(path: str) -> tuple[int, int] | None:
    """(inode, mtime) of ``manifest.json``: another one once it was written whole."""
    st = _stat(path)
    return None if st is None else (st.st_ino, st.st_mtime_ns)


@dataclass
class _Known:
    """What this process last read or wrote of one story's manifest: ``whole`` is the
    identity (inode, mtime) of ``manifest.json``, ``journal`` the journal's inode and how many
    of its bytes are applied (always up to a line's end), ``lines`` the journal's line count."""

    whole: tuple[int, int] | None
    journal: tuple[int, int] | None
    manifest: dict[str, dict]
    lines: int


# Per story folder, the manifest as last read or written here (the most recent
# _KNOWN_STORIES): a write reads the manifest under the story's lock, and re-reading it whole -
# the manifest and up to JOURNAL_LINES journal lines, each parsed - was a fifth of a task's
# file work. The files stay the truth: an entry is used only while manifest.json has the
# identity it had and the journal has the same inode, and only the journal bytes appended
# since (by another process: `doit restore`, a second worker) are read.
_KNOWN_STORIES = 512
_known: OrderedDict[str, _Known] = OrderedDict()
_klock = threading.Lock()


def _journal_state(path: str) -> tuple[int, int] | None:
    """(inode, size) of the journal: it only grows until it is removed."""
    st = _stat(path)
    return None if st is None else (st.st_ino, st.st_size)


def _apply_lines(manifest: dict, data: bytes) -> tuple[int, int]:
    """Apply the journal bytes ``data`` to ``manifest``; return (lines seen, bytes applied:
    up to the last newline - a torn last line is counted but left for the next read)."""
    lines = 0
    for line in data.splitlines(keepends=True):
        lines += 1
        if not line.endswith(b"\n"):
            break
        try:
            rel, rec = json.loads(line)
        except (ValueError, TypeError):
            continue
        if rec is None:
            manifest.pop(rel, None)
        else:
            manifest[rel] = rec
    end = data.rfind(b"\n") + 1
    return lines, end


def _remember(meta: str, known: _Known) -> None:
    with _klock:
        _known[meta] = known
        _known.move_to_end(meta)
        while len(_known) > _KNOWN_STORIES:
            _known.popitem(last=False)


def _read_manifest(story_dir: Path) -> tuple[dict[str, dict], int]:
    """The manifest (a new dict the caller may change) and how many journal lines it took (a
    torn or unreadable line, which only a kill during its append leaves, is skipped).

    Lock-free for readers: when the manifest was written whole while it was read (its inode
    changed: the journal read may be the next one), it is read again."""
    meta = os.path.join(story_dir, META_DIR)
    whole, journal = os.path.join(meta, MANIFEST_FILE), os.path.join(meta, JOURNAL_FILE)
    with _klock:
        known = _known.get(meta)
    if known is not None:
        state = _journal_state(journal)
        if _identity(whole) == known.whole:
            if state == known.journal or (state is None and known.journal is None):
                return dict(known.manifest), known.lines
            if (state is not None and known.journal is not None and state[0] == known.journal[0]
                    and state[1] > known.journal[1]):
                # appended since: apply only the new bytes
                try:
                    with open(journal, "rb") as fh:
                        fh.seek(known.journal[1])
                        tail = fh.read()
                except FileNotFoundError:
                    tail = None
                if tail is not None:
                    manifest = dict(known.manifest)
                    seen, used = _apply_lines(manifest, tail)
                    lines = known.lines + seen
                    if used == len(tail):  # whole lines only: remembered for the next read
                        _remember(meta, _Known(known.whole, (state[0], known.journal[1] + used),
                                               dict(manifest), lines))
                    if _identity(whole) == known.whole:
                        return manifest, lines
    for _ in range(8):
        before = _identity(whole)
        try:
            with open(whole, encoding="utf-8") as fh:
                manifest = json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError):
            manifest = {}
        lines, used, jstate = 0, 0, None
        try:
            with open(journal, "rb") as fh:
                data = fh.read()
                jstate = (os.fstat(fh.fileno()).st_ino, 0)
            lines, used = _apply_lines(manifest, data)
            if used == len(data):
                jstate = (jstate[0], used)
            else:
                jstate = None  # a torn last line: not remembered, read again next time
        except FileNotFoundError:
            pass
        if _identity(whole) == before:
            if jstate is not None or not os.path.exists(journal):
                _remember(meta, _Known(before, jstate, dict(manifest), lines))
            break
    return manifest, lines


def _record(story_dir: Path, rel: str, rec: dict | None, manifest: dict, lines: int) -> None:
    """Record ``rec`` for ``rel`` (None: forget it) with the story's lock held: append a line to
    the journal, or, once it holds :data:`JOURNAL_LINES`, write the manifest whole (``manifest``
    is the one read under this lock, :func:`_read_manifest`) and remove the journal."""
    meta = story_dir / META_DIR
    key = str(meta)
    if rec is None:
        manifest.pop(rel, None)
    else:
        manifest[rel] = rec
    if lines < JOURNAL_LINES:
        line = json.dumps([rel, rec], ensure_ascii=False, separators=(",", ":")) + "\n"
        fd = os.open(meta / JOURNAL_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT
                     | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            st = os.fstat(fd)
            size = st.st_size
            with _klock:
                known = _known.get(key)
            whole_known = known is not None and known.journal == (st.st_ino, size)
            if size and not whole_known and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # after a torn line (a kill): start a line of its own
            data = line.encode("utf-8")
            written = os.write(fd, data)  # one write: the line lands whole or torn
        finally:
            os.close(fd)
        if known is not None and written == len(data) and known.journal in (None, (st.st_ino, size)) \
                and (known.journal is not None or size == 0):
            _remember(key, _Known(known.whole, (st.st_ino, size + written), dict(manifest),
                                  lines + 1))
        else:
            with _klock:
                _known.pop(key, None)
        return
    atomic_write_json(meta / MANIFEST_FILE, manifest)
    try:
        os.unlink(meta / JOURNAL_FILE)  # applied: a kill before this replays it harmlessly
    except FileNotFoundError:
        pass
    _remember(key, _Known(_identity(str(meta / MANIFEST_FILE)), None, dict(manifest), 0))


@dataclass(frozen=True)
class WriteOutcome:
    """What :func:`write_target` did.

    Attributes:
        changed: the bytes on disk changed.
        kept: path of the previous version saved to history, or None.
        hand_edit: the previous version was a hand edit.
    """

    changed: bool
    kept: Path | None = None
    hand_edit: bool = False


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def is_hand_edited(story_dir: Path, rel: str, manifest: dict | None = None) -> bool:
    """True when the file exists and differs from what cloops last wrote (or was never written)."""
    path = story_dir / rel
    current = sha256_file(path)
    if current is None:
        return False
    rec = (manifest if manifest is not None else read_manifest(story_dir)).get(rel)
    return rec is None or rec.get("sha256") != current


def read_restored(story_dir: Path) -> dict[str, dict]:
    """``{rel: {"sha256", "from", "at"}}``: the versions ``doit restore`` put back."""
    try:
        return json.loads((story_dir / META_DIR / RESTORED_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def version_reason(story_dir: Path, rel: str, manifest: dict | None = None,
                   current: str | None = None) -> str | None:
    """Why the file of ``rel`` holds what it holds: ``"generated"`` (the bytes cloops last
    wrote), ``"restored"`` (put back by ``doit restore``) or ``"hand-edit"``; None when absent.

    ``current``: the file's SHA-256 when the caller has it already.
    """
    current = current or sha256_file(story_dir / rel)
    if current is None:
        return None
    rec = (manifest if manifest is not None else read_manifest(story_dir)).get(rel)
    if rec is not None and rec.get("sha256") == current:
        return "generated"
    if read_restored(story_dir).get(rel, {}).get("sha256") == current:
        return "restored"
    return "hand-edit"


def keep_version(story_dir: Path, rel: str, *, reason: str) -> Path:
    """Copy the current ``rel`` into its history folder; return the copy's path."""
    src = story_dir / rel
    hist = story_dir / META_DIR / "history" / rel
    hist.mkdir(parents=True, exist_ok=True)
    dest = hist / f"{_stamp()}-{reason}{src.suffix}"
    shutil.copy2(src, dest)
    return dest


def made_from(story_dir: Path, rel: str) -> tuple[str, bool] | None:
    """``(source, edited)``: the ``source`` recorded when cloops last wrote ``rel``, and whether
    the file was changed since (a hand edit, a restore); None when the file is missing or
    nothing was recorded."""
    rec = read_manifest(story_dir).get(rel)
    current = sha256_file(story_dir / rel)
    if not rec or not rec.get("source") or current is None:
        return None
    return rec["source"], rec.get("sha256") != current


def write_target(story_dir: Path, rel: str, data: bytes, *, made_by: str,
                 offline: bool, source: str | None = None) -> WriteOutcome:
    """Write target ``rel`` of a story atomically, keeping its previous version first.

    ``made_by`` is recorded in the manifest (``"openai gpt-5.1"``, ``"draft"``, ``"assembled"``),
    and ``source``, when given: a digest of what the bytes were made from (see
    :func:`made_from`). Identical bytes are not rewritten (the file's mtime is kept).
    """
    with story_lock(story_dir):
        manifest, lines = _read_manifest(story_dir)
        path = story_dir / rel
        new_sha = sha256_bytes(data)
        current = sha256_file(path)
        kept = None
        hand = False
        if current is not None and current != new_sha:
            reason = version_reason(story_dir, rel, manifest, current)
            hand = reason != "generated"  # a restored version is an edit too
            kept = keep_version(story_dir, rel, reason=reason)
        if current != new_sha:
            atomic_write_bytes(path, data)
        rec = {"sha256": new_sha, "madeBy": made_by, "offline": offline,
               "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if source:
            rec["source"] = source
        _record(story_dir, rel, rec, manifest, lines)
        return WriteOutcome(changed=current != new_sha, kept=kept, hand_edit=hand)


def remove_target(story_dir: Path, rel: str) -> Path | None:
    """Delete target ``rel`` (for ``doit clean``); a hand-edited one is first kept in history.

    Returns the history copy of a hand edit, or None.
    """
    path = story_dir / rel
    kept = None
    with story_lock(story_dir):
        manifest, lines = _read_manifest(story_dir)
        if path.is_file():
            if is_hand_edited(story_dir, rel, manifest):
                kept = keep_version(story_dir, rel,
                                    reason=version_reason(story_dir, rel, manifest) or "hand-edit")
            path.unlink()
            parent = path.parent
            while parent != story_dir and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        if rel in manifest:
            _record(story_dir, rel, None, manifest, lines)
    return kept


@dataclass(frozen=True)
class Version:
    """One kept version of a target (a file under ``.cloops/history/<rel>/``).

    Attributes:
        path: the kept copy.
        at: when it was kept, UTC, ISO 8601 (``2025-05-01T12:00:00.123456Z``).
        reason: why it was kept as it was: ``hand-edit``, ``generated`` or ``restored``.
        size: bytes.
    """

    path: Path
    at: str
    reason: str
    size: int


def list_versions(story_dir: Path, rel: str) -> list[Version]:
    """The kept versions of target ``rel``, oldest first (the current file is not among them)."""
    hist = story_dir / META_DIR / "history" / rel
    if not hist.is_dir():
        return []
    ext = Path(rel).suffix
    out: list[Version] = []
    for p in sorted(hist.iterdir()):
        if not p.is_file():
            continue
        stamp, _, rest = p.name.partition("-")
        reason = rest[:-len(ext)] if ext and rest.endswith(ext) else rest
        try:
            at = datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").isoformat() + "Z"
        except ValueError:
            at = stamp
        out.append(Version(path=p, at=at, reason=reason, size=p.stat().st_size))
    return out


def restore_version(story_dir: Path, rel: str, data: bytes, *, source: str) -> Path | None:
    """Put ``data`` (a kept version) back as target ``rel``, keeping the current file first.

    The write is an edit, not a generation: the manifest is left as it is (so the bytes count
    as a hand edit and what is downstream rebuilds from them) and ``restored.json`` records
    ``source`` (which version came back). Returns the history copy of the replaced file, or None
    when there was none or it already held ``data``.
    """
    with story_lock(story_dir):
        if sha256_file(story_dir / rel) == sha256_bytes(data):
            return None
        kept = _edit(story_dir, rel, data)
        restored = read_restored(story_dir)
        new_sha = sha256_bytes(data)
        restored[rel] = {"sha256": new_sha, "from": source,
                         "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_json(story_dir / META_DIR / RESTORED_FILE, restored)
        return kept


def _edit(story_dir: Path, rel: str, data: bytes) -> Path | None:
    """Write ``data`` as ``rel`` keeping the current file in history first (the caller holds
    the story lock); return the history copy, or None when there was no file."""
    path = story_dir / rel
    current = sha256_file(path)
    kept = None
    if current is not None:
        kept = keep_version(story_dir, rel,
                            reason=version_reason(story_dir, rel, None, current) or "hand-edit")
    atomic_write_bytes(path, data)
    return kept


def edit_target(story_dir: Path, rel: str, data: bytes) -> Path | None:
    """Write a person's edit of target ``rel``, keeping the current file in history first.

    The manifest is left as it is, so the bytes count as a hand edit: the next build keeps
    them and rebuilds what is downstream. Returns the history copy of the replaced file, or
    None when there was none or it already held ``data`` (then nothing is written).
    """
    with story_lock(story_dir):
        if sha256_file(story_dir / rel) == sha256_bytes(data):
            return None
        return _edit(story_dir, rel, data)
