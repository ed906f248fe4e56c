"""Read an MP4's facts from its boxes (atoms): size, frame rate, codecs, duration, faststart.

Layer: **services**.

imageio-ffmpeg ships ``ffmpeg`` but no ``ffprobe``, and parsing FFmpeg's log is fragile, so
:func:`probe` reads the ISO base media file format directly (ISO/IEC 14496-12: ``ftyp``,
``moov`` > ``mvhd``, ``trak`` > ``tkhd``/``mdia`` > ``mdhd``/``hdlr``/``minf`` > ``stbl`` >
``stsd``/``stts``, ``colr``; ISO/IEC 14496-14/-15 for ``esds`` and ``avcC``). Only the header boxes are
read: the media data (``mdat``) is skipped, so probing a large file is instant.
"""

from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO, Iterator

from ...core.errors import InputError

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf"}
_AVC_PROFILES = {66: "Constrained Baseline/Baseline", 77: "Main", 88: "Extended", 100: "High",
                 110: "High 10", 122: "High 4:2:2", 244: "High 4:4:4"}


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """Yield ``(type, payload_start, payload_end)`` of the boxes in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _top_level(fh: BinaryIO) -> Iterator[tuple[bytes, int, int]]:
    """Yield ``(type, offset, size)`` of the file's top-level boxes, seeking past each."""
    fh.seek(0, os.SEEK_END)
    total = fh.tell()
    pos = 0
    while pos + 8 <= total:
        fh.seek(pos)
        head = fh.read(16)
        size, kind = struct.unpack(">I4s", head[:8])
        if size == 1:
            size = struct.unpack(">Q", head[8:16])[0]
        elif size == 0:
            size = total - pos
        if size < 8:
            return
        yield kind, pos, size
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, a, b in _boxes(data, start, end):
        if k == kind:
            return a, b
    return None


def _path(data: bytes, start: int, end: int, *kinds: bytes) -> tuple[int, int] | None:
    span: tuple[int, int] | None = (start, end)
    for kind in kinds:
        span = _child(data, span[0], span[1], kind)
        if span is None:
            return None
    return span


def _full_box_times(data: bytes, a: int) -> tuple[int, int]:
    """``(timescale, duration)`` of an ``mvhd``/``mdhd`` payload starting at ``a``."""
    version = data[a]
    if version == 1:
        return struct.unpack(">IQ", data[a + 20:a + 32])
    return struct.unpack(">II", data[a + 12:a + 20])


def _esds_object_type(data: bytes, a: int, b: int) -> int | None:
    """The objectTypeIndication in an ``esds`` payload (0x40 = MPEG-4 audio, i.e. AAC)."""
    pos = a + 4  # version + flags
    while pos < b:
        tag = data[pos]
        pos += 1
        length = 0
        for _ in range(4):  # expandable size: up to 4 bytes, 7 bits each
            byte = data[pos]
            pos += 1
            length = (length << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        if tag == 0x03:  # ES_Descriptor: ES_ID(2) + flags(1) [+ optional fields]
            flags = data[pos + 2]
            pos += 3
            if flags & 0x80:
                pos += 2
            if flags & 0x40:
                pos += 1 + data[pos]
            if flags & 0x20:
                pos += 2
            continue
        if tag == 0x04:  # DecoderConfigDescriptor
            return data[pos]
        pos += length
    return None


def _track(data: bytes, a: int, b: int) -> dict[str, Any]:
    info: dict[str, Any] = {}
    mdhd = _path(data, a, b, b"mdia", b"mdhd")
    hdlr = _path(data, a, b, b"mdia", b"hdlr")
    stbl = _path(data, a, b, b"mdia", b"minf", b"stbl")
    if not (mdhd and hdlr and stbl):
        return info
    timescale, duration = _full_box_times(data, mdhd[0])
    info["handler"] = data[hdlr[0] + 8:hdlr[0] + 12].decode("latin-1")
    info["timescale"] = timescale
    info["duration_s"] = duration / timescale if timescale else 0.0
    stsd = _child(data, *stbl, b"stsd")
    if stsd:
        entries = list(_boxes(data, stsd[0] + 8, stsd[1]))
        if entries:
            fmt, ea, eb = entries[0]
            info["format"] = fmt.decode("latin-1")
            if info["handler"] == "vide":
                info["width"], info["height"] = struct.unpack(">HH", data[ea + 24:ea + 28])
                avcc = _child(data, ea + 78, eb, b"avcC")
                if avcc:
                    info["profile"] = _AVC_PROFILES.get(data[avcc[0] + 1], str(data[avcc[0] + 1]))
                colr = _child(data, ea + 78, eb, b"colr")
                if colr and data[colr[0]:colr[0] + 4] == b"nclx" and colr[1] - colr[0] >= 11:
                    primaries, transfer, matrix = struct.unpack(
                        ">HHH", data[colr[0] + 4:colr[0] + 10])
                    info["color"] = {"primaries": primaries, "transfer": transfer,
                                     "matrix": matrix,
                                     "range": "pc" if data[colr[0] + 10] >> 7 else "tv"}
            elif info["handler"] == "soun":
                info["channels"] = struct.unpack(">H", data[ea + 16:ea + 18])[0]
                info["sample_rate_hz"] = struct.unpack(">I", data[ea + 24:ea + 28])[0] >> 16
                esds = _child(data, ea + 28, eb, b"esds")
                if esds:
                    info["object_type"] = _esds_object_type(data, *esds)
    stts = _child(data, *stbl, b"stts")
    if stts:
        count = struct.unpack(">I", data[stts[0] + 4:stts[0] + 8])[0]
        samples = 0
        deltas = set()
        for k in range(count):
            n, delta = struct.unpack(">II", data[stts[0] + 8 + 8 * k:stts[0] + 16 + 8 * k])
            samples += n
            deltas.add(delta)
        info["samples"] = samples
        info["sample_deltas"] = sorted(deltas)
    return info


def _codec(track: dict[str, Any]) -> str:
    fmt = track.get("format", "")
    if fmt in ("avc1", "avc3"):
        return "h264"
    if fmt in ("hvc1", "hev1"):
        return "hevc"
    if fmt == "mp4a":
        return "aac" if track.get("object_type") in (0x40, 0x66, 0x67, 0x68) else "mp4a"
    return fmt


def probe(path: str | os.PathLike) -> dict[str, Any]:
    """Return the facts of an MP4 file.

    Shape::

        {"width": 1080, "height": 1920,            # px, of the first video track
         "fps": 30.0, "frames": 90,                # frames per second, frame count
         "codecs": ["h264", "aac"],                # one per track, in file order
         "video_codec": "h264", "video_profile": "High",
         "color": {"primaries": 1, "transfer": 1,  # the colr box (nclx), ISO/IEC 23091-2
                   "matrix": 1, "range": "tv"},    # code points: 1 = BT.709; tv = limited
         "audio_codec": "aac", "audio_sample_rate_hz": 48000, "audio_channels": 2,
         "duration_s": 3.0,                        # the movie's (longest track's) duration
         "video_duration_s": 3.0, "audio_duration_s": 3.0,
         "faststart": True,                        # moov before mdat: playable while loading
         "top_level": ["ftyp", "moov", "free", "mdat"]}

    Keys of a missing track are absent.

    Raises:
        InputError: the file is missing or is not an MP4 with a ``moov`` box.
    """
    try:
        with open(path, "rb") as fh:
            top = list(_top_level(fh))
            moov = next(((off, size) for kind, off, size in top if kind == b"moov"), None)
            if moov is None:
                raise InputError("not an MP4 file (no moov box).", file=str(path),
                                 fix="re-render the clip.")
            fh.seek(moov[0])
            data = fh.read(moov[1])
    except FileNotFoundError:
        raise InputError("the file does not exist.", file=str(path)) from None
    except (OSError, struct.error) as exc:
        raise InputError(f"cannot read the MP4 ({exc}).", file=str(path)) from None
    kinds = [k.decode("latin-1") for k, _, _ in top]
    out: dict[str, Any] = {"top_level": kinds, "codecs": []}
    out["faststart"] = "mdat" in kinds and kinds.index("moov") < kinds.index("mdat")
    body = list(_boxes(data))
    if not body or body[0][0] != b"moov":
        raise InputError("the moov box is damaged.", file=str(path), fix="re-render the clip.")
    _, ma, mb = body[0]
    mvhd = _child(data, ma, mb, b"mvhd")
    if mvhd:
        timescale, duration = _full_box_times(data, mvhd[0])
        out["duration_s"] = duration / timescale if timescale else 0.0
    for kind, a, b in _boxes(data, ma, mb):
        if kind != b"trak":
            continue
        track = _track(data, a, b)
        codec = _codec(track)
        out["codecs"].append(codec)
        if track.get("handler") == "vide" and "width" not in out:
            out["width"], out["height"] = track.get("width"), track.get("height")
            out["video_codec"] = codec
            if "profile" in track:
                out["video_profile"] = track["profile"]
            if "color" in track:
                out["color"] = track["color"]
            out["video_duration_s"] = track["duration_s"]
            frames = track.get("samples", 0)
            out["frames"] = frames
            out["fps"] = round(frames / track["duration_s"], 3) if track["duration_s"] else 0.0
        elif track.get("handler") == "soun" and "audio_codec" not in out:
            out["audio_codec"] = codec
            out["audio_sample_rate_hz"] = track.get("sample_rate_hz")
            out["audio_channels"] = track.get("channels")
            out["audio_duration_s"] = track["duration_s"]
    return out
