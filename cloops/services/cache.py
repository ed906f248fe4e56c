"""The response cache: every paid call's result, addressed by the whole request.

The key is the SHA-256 of the canonical JSON of ``{service, backend, request}`` where
``request`` is the request's ``cache_key()`` — model, every parameter, the rendered prompts and
schema. A hit restores the output with no call. Entries are written atomically as soon as a
call returns, so a killed run re-pays nothing, and reverting an edit to a state built before
costs nothing.

Layout: ``<dir>/<key[:2]>/<key>.json`` (LLM results) and ``<key>.jpg`` + ``<key>.json``
(images, the JSON holding size and billing).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes, atomic_write_text, canonical_json, sha256_bytes
from .base import ImageResult, LLMResult, Usage, VoiceResult


TEMP_GRACE_S = 3600.0  # a temp file this old was left by a killed run, not one still writing


def cache_key(service: str, backend: str, request_key: dict) -> str:
    """The cache address of a request (hex SHA-256)."""
    payload = {"service": service, "backend": backend, "request": request_key}
    return sha256_bytes(canonical_json(payload).encode("utf-8"))


class ResponseCache:
    """A folder of cached responses. ``enabled=False`` makes every lookup miss (writes still
    happen, so a deliberate re-roll replaces what a later revert would restore)."""

    def __init__(self, directory: Path, *, enabled: bool = True):
        self.dir = Path(directory)
        self.enabled = enabled

    def _path(self, key: str, suffix: str) -> Path:
        return self.dir / key[:2] / f"{key}{suffix}"

    def get_llm(self, key: str) -> LLMResult | None:
        if not self.enabled:
            return None
        try:
            raw = json.loads(self._path(key, ".json").read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        self.touch(key)
        return LLMResult(text=raw["text"], data=raw.get("data"), usage=Usage(**raw["usage"]),
                         model=raw.get("model", ""))

    def put_llm(self, key: str, result: LLMResult) -> None:
        # not canonical_json: the parsed output keeps the model's key order, so a cache hit
        # writes the same pages.json, byte for byte, as the call it replays
        atomic_write_text(self._path(key, ".json"), json.dumps(
            {"text": result.text, "data": result.data, "usage": result.usage.as_dict(),
             "model": result.model}, ensure_ascii=False, separators=(",", ":")))

    def get_image(self, key: str) -> ImageResult | None:
        if not self.enabled:
            return None
        try:
            meta = json.loads(self._path(key, ".json").read_text(encoding="utf-8"))
            jpeg = self._path(key, ".jpg").read_bytes()
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        self.touch(key)
        return ImageResult(jpeg=jpeg, width_px=meta["width_px"], height_px=meta["height_px"],
                           images_billed=meta.get("images_billed", 1))

    def put_image(self, key: str, result: ImageResult) -> None:
        # image bytes first: a meta file always has its image
        atomic_write_bytes(self._path(key, ".jpg"), result.jpeg)
        atomic_write_text(self._path(key, ".json"), canonical_json(
            {"width_px": result.width_px, "height_px": result.height_px,
             "images_billed": result.images_billed}))

    def get_voice(self, key: str) -> VoiceResult | None:
        if not self.enabled:
            return None
        try:
            meta = json.loads(self._path(key, ".json").read_text(encoding="utf-8"))
            mp3 = self._path(key, ".mp3").read_bytes()
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        self.touch(key)
        return VoiceResult(mp3=mp3, duration_s=meta["duration_s"],
                           timings=tuple(tuple(t) for t in meta["timings"]),
                           characters=meta.get("characters", 0))

    def put_voice(self, key: str, result: VoiceResult) -> None:
        atomic_write_bytes(self._path(key, ".mp3"), result.mp3)
        atomic_write_text(self._path(key, ".json"), canonical_json(
            {"duration_s": result.duration_s, "timings": [list(t) for t in result.timings],
             "characters": result.characters}))

    def touch(self, key: str) -> None:
        """Mark an entry used now (a hit), so pruning by age keeps what is still in use."""
        for suffix in (".json", ".jpg", ".mp3"):
            try:
                os.utime(self._path(key, suffix))
            except FileNotFoundError:
                pass

    def prune(self, *, older_than_s: float) -> tuple[int, int]:
        """Delete entries not used for ``older_than_s`` seconds, and the temp files of writes a
        killed run left behind (``.<name>.<pid>-<thread>-<n>.tmp``, see
        :func:`cloops.fileio.atomic_write_bytes`) once they are :data:`TEMP_GRACE_S` old — a
        write takes milliseconds, so none of a run still going is touched. Returns (entries,
        bytes) removed; temp files count in the bytes only."""
        import time
        now = time.time()
        cutoff = now - older_than_s
        removed = freed = 0
        if not self.dir.is_dir():
            return 0, 0
        for meta in self.dir.glob("*/*.json"):
            try:
                if meta.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            for p in (meta, meta.with_suffix(".jpg"), meta.with_suffix(".mp3")):
                try:
                    freed += p.stat().st_size
                    p.unlink()
                except FileNotFoundError:
                    pass
            removed += 1
        for tmp in self.dir.glob("*/.*.tmp"):
            try:
                st = tmp.stat()
                if st.st_mtime <= now - TEMP_GRACE_S:
                    tmp.unlink()
                    freed += st.st_size
            except FileNotFoundError:
                pass
        return removed, freed

    def stats(self) -> dict[str, Any]:
        """``{"entries": int, "bytes": int}``."""
        n = size = 0
        if self.dir.is_dir():
            for root, _dirs, files in os.walk(self.dir):
                for f in files:
                    if f.endswith(".json"):
                        n += 1
                    size += os.path.getsize(os.path.join(root, f))
        return {"entries": n, "bytes": size}
