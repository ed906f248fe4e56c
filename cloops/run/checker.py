"""doit's file check, with each file's digest computed once per run.

Layer: **run**.

doit decides whether a ``file_dep`` changed from its (mtime, size, MD5) and, after every task
that succeeds, stores that triple for each of the task's ``file_dep`` files
(``doit.dependency.MD5Checker.get_state``: two ``stat`` calls and a read and hash of the whole
file). A story's ``pages.json`` or ``cast.json`` is a ``file_dep`` of a dozen tasks, so one
build hashed it a dozen times. :class:`CachedMD5Checker` keeps, per path, the digest with the
file's identity (inode, mtime, ctime, size, from one ``stat``) and hashes again only when the
identity changed; what it stores and compares is what doit's own checker does, so the rules
of a rebuild are doit's (a touched file whose bytes are the same is not a change).

An edit always changes the ctime (no tool can set it back) and an atomic write the inode, so
a digest is never used for bytes it was not computed from.
"""

from __future__ import annotations

import os
import threading

from doit.dependency import MD5Checker, get_file_md5

_MAX_ENTRIES = 200_000  # ~40 MB at the most; a build of 8,000 stories has about that many files


class CachedMD5Checker(MD5Checker):
    """doit's MD5 checker (``check_file_uptodate``), hashing a file once while it is unchanged.

    State stored per ``file_dep``: ``(mtime as float seconds, size in bytes, MD5 hex)``, as
    doit's ``MD5Checker`` (doit 0.37, ``doit/dependency.py``) stores it, so a project's
    existing state stays valid.
    """

    _digests: dict[str, tuple[tuple[int, int, int, int], str]] = {}
    _lock = threading.Lock()

    @classmethod
    def digest(cls, path: str, st: os.stat_result) -> str:
        """The MD5 (hex) of the file at ``path`` whose ``os.stat`` is ``st``.

        Raises:
            OSError: the file cannot be read.
        """
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        known = cls._digests.get(path)
        if known is not None and known[0] == key:
            return known[1]
        md5 = get_file_md5(path)
        with cls._lock:
            if len(cls._digests) >= _MAX_ENTRIES:
                cls._digests.clear()
            cls._digests[path] = (key, md5)
        return md5

    def check_modified(self, file_path, file_stat, state):
        """True when the file differs from ``state`` (doit's rule: same mtime - unchanged;
        another size - changed; else the digests decide)."""
        timestamp, size, file_md5 = state
        if file_stat.st_mtime == timestamp:
            return False
        if file_stat.st_size != size:
            return True
        return file_md5 != self.digest(file_path, file_stat)

    def get_state(self, dep, current_state):
        """``(mtime, size, md5)`` of ``dep`` to store, or None when ``current_state`` has its
        mtime (doit's shortcut: nothing to store)."""
        st = os.stat(dep)
        if current_state and current_state[0] == st.st_mtime:
            return None
        return st.st_mtime, st.st_size, self.digest(dep, st)
