"""Atomic file writes and content hashes.

Layer: **core**.

doit saves its dependency state only when a run ends (pydoit#463), so any target may be
interrupted mid-write by a kill. Every target is therefore written to a temporary file in the
same directory and renamed into place: a reader sees the old content or the new, never half.
"""

from __future__ import annotations

import hashlib
import json
import itertools
import os
import re
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


DURABLE = os.environ.get("CLOOPS_FSYNC", "").lower() in ("1", "true", "yes")
_SEQ = itertools.count()
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _temp_name(path: str) -> str:
    """A temp file name beside ``path``: ``.<name>.<pid>-<thread>-<n>.tmp``, unique per process,
    thread and write (:func:`remove_temp_files` reads the pid back to tell a killed writer's
    leftover from a write in flight). Strings, not ``pathlib``: a build writes ~2 files a
    task."""
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.{os.getpid()}-{threading.get_ident()}-{next(_SEQ)}.tmp")


@contextmanager
def staged(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp name beside ``path`` (:func:`_temp_name`) for the caller to write; when the
    block ends normally the temp file is renamed onto ``path``, when it raises (or the rename
    fails) the temp file is removed. ``path``'s folder must exist.

    Raises:
        OSError: the rename failed (the temp file is gone, ``path`` untouched).
    """
    with _staged(os.fspath(path)) as tmp:
        yield Path(tmp)


@contextmanager
def _staged(path: str) -> Iterator[str]:
    """:func:`staged` on strings (no ``pathlib`` objects: every target and cache entry is
    written through it)."""
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename), creating parents.

    A killed process leaves the old file or the new one, never half of either: the rename is
    atomic and the kernel keeps the written data. ``CLOOPS_FSYNC=1`` also fsyncs each file,
    which protects against power loss at a cost of milliseconds per target.
    """
    path = os.fspath(path)
    # the temp name is unique per process, thread and write (tempfile.mkstemp's random names
    # cost more than the write of a small target); created like any file, so the umask decides
    # its permissions
    with _staged(path) as tmp:
        try:
            fd = os.open(tmp, _CREATE, 0o666)
        except FileNotFoundError:  # the first write into this folder
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fd = os.open(tmp, _CREATE, 0o666)
        try:
            # os.write, not a file object: no buffer, isatty or seek calls for a one-shot write
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if DURABLE:
                os.fsync(fd)
        finally:
            os.close(fd)


def atomic_copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the file ``src`` to ``dst`` atomically (temp file beside ``dst`` + rename, parents
    created), streaming: a file of any size, never half of it at ``dst``.

    Raises:
        OSError: ``src`` unreadable or ``dst`` unwritable (no temp file is left).
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with staged(dst) as tmp:
        shutil.copyfile(src, tmp)
        if DURABLE:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())


_TEMP_PID = re.compile(r"\.(\d+)-\d+(?:-\d+)?\.tmp$")


def _alive(pid: int) -> bool:
    """True if a process with ``pid`` runs on this machine (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return False
    return True


def remove_temp_files(folder: str | os.PathLike) -> int:
    """Delete the temp files a killed process left under ``folder`` mid-write (the
    ``.<name>.<pid>-<thread>-<n>.tmp`` files of :func:`atomic_write_bytes`); return how many.

    Only a file whose writer is gone is removed: the pid in its name no longer runs. A write in
    flight (this process's other threads, doit's up-to-date checks marking a lock stale, another
    ``doit`` on the same build) keeps its temp file until its rename.
    """
    removed = 0
    for tmp in Path(folder).rglob(".*.tmp"):
        m = _TEMP_PID.search(tmp.name)
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            if tmp.is_file():
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of ``path`` (``Path.read_text`` without building a ``Path``).

    Raises:
        OSError: as ``open`` (``FileNotFoundError`` when it does not exist).
    """
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of ``path`` (``Path.read_bytes`` without building a ``Path``).

    Raises:
        OSError: as ``open``.
    """
    with open(path, "rb") as f:
        return f.read()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def dump_json(data: Any) -> str:
    """Serialize ``data`` the way cloops writes JSON targets: 2-space indent, UTF-8, final newline."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | os.PathLike, data: Any, *, pretty: bool = False) -> None:
    """Write ``data`` as JSON to ``path`` atomically: compact (cloops' own state files, written
    on every target: the C encoder is several times faster than the indenting one), or
    ``pretty`` as :func:`dump_json` for files people are expected to read."""
    if pretty:
        atomic_write_text(path, dump_json(data))
    else:
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")


def canonical_json(data: Any) -> str:
    """Return a stable JSON text for hashing: sorted keys, no whitespace."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(data: Any) -> str:
    """Return the hex SHA-256 of ``canonical_json(data)``."""
    return sha256_bytes(canonical_json(data).encode("utf-8"))


def stat_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """``(inode, size, mtime ns, ctime ns)``: a file's bytes are taken to be the same while
    this is (a rewrite by rename is a new inode; one in place moves the ctime)."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_stat(path: str | os.PathLike) -> list[int] | None:
    """``[size in bytes, mtime in ns]`` of a file, or None when it does not exist: what a
    value derived from the file (a seal, a memo) is derived from."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [st.st_size, st.st_mtime_ns]


def sha256_file(path: str | os.PathLike) -> str | None:
    """Return the hex SHA-256 of a file's bytes, or None if it does not exist."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except FileNotFoundError:
        return None
