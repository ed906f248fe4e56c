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

from ..core.fileio import stat_identity

_MAX_ENTRIES = 200_000  # ~40 MB at the most; a build of 8,000 stories has about that many files


class CachedMD5Checker(MD5Checker):
    """doit's MD5 checker (``check_file_uptodate``), hashing a file once while it is unchanged.

    State stored per ``file_dep``: ``(mtime as float seconds, size in bytes, MD5 hex)``, as
    doit's ``MD5Checker`` (doit 0.37, ``doit/dependency.py``) stores it, so a project's
    existing state stays valid.
    """

    _digests: dict[str, tuple[tuple[int, int, int, int], str]] = {}
    _lock = threading.Lock()
    # the stat of each file_dep taken when doit saved a task's success, for the reporter's
    # seal (it runs next, in the same thread: cloops.run.reporter) - one stat, not two
    saved_stats: dict[str, os.stat_result] = {}

    @classmethod
    def digest(cls, path: str, st: os.stat_result) -> str:
        """The MD5 (hex) of the file at ``path`` whose ``os.stat`` is ``st``.

        Raises:
            OSError: the file cannot be read.
        """
        key = stat_identity(st)
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
        self.saved_stats[dep] = st
        if current_state and current_state[0] == st.st_mtime:
            return None
        return st.st_mtime, st.st_size, self.digest(dep, st)


ASK_ONE_BY_ONE = 64  # rows asked for one at a time before every task id is read at once


def install_row_index() -> None:
    """Make doit's sqlite3 state answer "no row" for a task it has no row of without asking
    the database each time.

    doit reads a task's saved state with one ``SELECT`` per task the first time it checks it
    (``doit.dependency.SqliteDB._get_task_data``, on doit's main thread: ~10 system calls
    for sqlite's file locks, and in a fresh build every answer is "none"). After
    :data:`ASK_ONE_BY_ONE` such questions in a process, the ids of every stored row are read
    once and a task without a row is answered from them; a task with one is read as before.
    Rows doit writes in this process go to its own cache first (it writes the file at the
    end), so the set read is complete for what the database can answer. Idempotent.
    """
    from doit.dependency import SqliteDB

    if getattr(SqliteDB, "_cloops_rows", False):
        return
    read_row = SqliteDB._get_task_data

    def _get_task_data(self, task_id):
        ids = getattr(self, "_cloops_ids", None)
        if ids is None:
            asked = getattr(self, "_cloops_asked", 0) + 1
            self._cloops_asked = asked
            if asked > ASK_ONE_BY_ONE:
                cur = self._conn.cursor()
                cur.row_factory = None  # plain tuples, not doit's dicts
                ids = self._cloops_ids = {row[0] for row in cur.execute(
                    "select task_id from doit")}
        if ids is not None and task_id not in ids:
            return {}
        return read_row(self, task_id)

    def remove(self, task_id, _remove=SqliteDB.remove):
        _remove(self, task_id)
        ids = getattr(self, "_cloops_ids", None)
        if ids is not None:
            ids.discard(task_id)

    SqliteDB._get_task_data = _get_task_data
    SqliteDB.remove = remove
    SqliteDB._cloops_rows = True
