"""Downscaled previews of a story's images, cached by content, so an index of 500 stories
loads fast and a re-run makes previews only for new pictures.

Layer: **steer**. A preview is a JPEG at most :data:`BOX_PX` wide and tall, stored under
``build/review/previews/<sha[:2]>/<sha[:16]>.jpg`` (named by the SHA-256 of the original's
bytes: the same picture in two stories, or as a take, has one preview). An image already
within the box and under :data:`SMALL_BYTES` is shown as it is.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ...core.fileio import atomic_write_bytes, atomic_write_json

BOX_PX = (288, 512)  # width, height: a 9:16 page 288 px wide (JPEG decodes 576×1024 at 1/2)
SMALL_BYTES = 60_000
QUALITY = 75
POOL_FROM = 24  # previews to make before a process pool pays for its start-up


def preview_rel(sha: str) -> str:
    """Where the preview of the picture with SHA-256 ``sha`` goes, relative to build/review."""
    return f"previews/{sha[:2]}/{sha[:16]}.jpg"


def make_preview(src: str, dest: str) -> bool:
    """Write a JPEG preview of ``src`` to ``dest``; False when ``src`` needs none (already
    within the box and small) or cannot be read as an image (it is then shown as it is)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(src) as im:
            w, h = im.size
            if w <= BOX_PX[0] and h <= BOX_PX[1] and os.path.getsize(src) <= SMALL_BYTES:
                return False
            im.draft("RGB", BOX_PX)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, much faster
            im = im.convert("RGB")
            im.thumbnail(BOX_PX)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=QUALITY, optimize=False)
    except (OSError, UnidentifiedImageError, ValueError):
        return False
    atomic_write_bytes(dest, buf.getvalue())
    return True


def _job(args: tuple[str, str]) -> bool:
    return make_preview(*args)


class Previews:
    """The previews of one review site: ``previews.json`` remembers, per picture SHA-256, the
    preview's path or ``""`` (shown as it is)."""

    def __init__(self, review_dir: Path):
        self.dir = review_dir
        self.index_path = review_dir / ".cloops" / "previews.json"
        try:
            self.known: dict[str, str] = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            self.known = {}
        self._todo: dict[str, str] = {}  # sha → source file
        self.made = 0

    def want(self, sha: str | None, src: Path) -> None:
        """Ask for the preview of ``src`` (SHA-256 ``sha``) unless it exists."""
        if not sha or sha in self._todo:
            return
        rel = self.known.get(sha)
        if rel is None or (rel and not (self.dir / rel).is_file()):
            self._todo[sha] = str(src)

    def make(self) -> int:
        """Make every preview asked for (in a process pool when there are many); return how
        many were made."""
        jobs = [(sha, src, str(self.dir / preview_rel(sha))) for sha, src in self._todo.items()]
        self._todo = {}
        if not jobs:
            return 0
        workers = min(os.cpu_count() or 1, 8)
        if len(jobs) >= POOL_FROM and workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                done = list(pool.map(_job, [(src, dest) for _, src, dest in jobs],
                                     chunksize=16))
        else:
            done = [make_preview(src, dest) for _, src, dest in jobs]
        for (sha, _src, _dest), ok in zip(jobs, done):
            self.known[sha] = preview_rel(sha) if ok else ""
        self.made += sum(done)
        atomic_write_json(self.index_path, self.known)
        return sum(done)

    def of(self, sha: str | None) -> str | None:
        """The preview of picture ``sha`` relative to build/review, or None: show the original."""
        return self.known.get(sha or "") or None
