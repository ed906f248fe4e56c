"""Run the FFmpeg that imageio-ffmpeg ships: find it, check it, encode frames into an MP4.

Layer: **services**.

The binary comes from the ``imageio-ffmpeg`` wheel on PyPI (a static build with libx264, the
native ``aac`` encoder and libass; GPLv3, see :mod:`cloops.services.media`). ``IMAGEIO_FFMPEG_EXE``
points it elsewhere (imageio-ffmpeg's own variable); that FFmpeg needs ``libx264`` and ``aac``.

Output is deterministic and atomic:

* deterministic - the same frames and audio give the same bytes: ``-fflags +bitexact`` and
  ``-flags +bitexact`` on both encoders (no version strings or times in the file; the AAC
  encoder uses its exact C arithmetic), ``-map_metadata -1``, a fixed thread count for
  libx264 (its output depends on the count, never on timing, unless ``--non-deterministic``
  is set), one filter thread, frames that arrive already in the encoder's format (no
  swscale conversion, whose SIMD paths round differently per CPU), and fixed encoder settings
  (BRIEF.md "Rendering"; x264 ``--help``: "--non-deterministic ... at the cost of
  repeatability"). Tested on one machine and FFmpeg build; another CPU or another
  imageio-ffmpeg release may give other (equally valid) bytes;
* atomic - FFmpeg writes ``.<name>.<pid>-<thread>-<n>.tmp`` beside the target (the pattern
  :func:`cloops.core.fileio.remove_temp_files` cleans), including its second ``+faststart`` pass,
  and the file is renamed into place only once FFmpeg succeeded; on any failure it is deleted.

Errors (all :class:`~cloops.core.errors.CloopsError`, never a raw traceback)::

    RenderError     FFmpeg missing, unusable, or the encode failed: names the output file,
                    the inputs, FFmpeg's last message and the fix
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

from ...core import cpus
from ...core.errors import CloopsError, user_message
from ...core.fileio import staged
from .layout import FPS, FULL, Raster

# libx264 settings. "superfast" keeps a 20 s body under half its running time on 2 cores
# (benchmarks/render_bench.py) with CABAC and B-frames still on; CRF 20 is visually clean for
# flat comic art. Keyframes at least every 2 s let an editor cut anywhere without re-encoding
# much. Colour is tagged BT.709, the HD default platforms assume.
# One encoder thread, B-frames in a fixed pattern (b-adapt=0) and no extra keyframes at cuts
# (scenecut=0: a keyframe every GOP_FRAMES exactly): x264 then skips its per-frame lookahead
# analysis, and a build runs one render per core, so a second thread per encoder only adds
# its hand-offs. Measured on a 10 s body (300 frames): 2.1 CPU-s against 2.75-4.0, 1.3 % fewer
# bytes (benchmarks/README.md, issue 24).
X264_PRESET = "superfast"
X264_CRF = 20
X264_THREADS = 1
X264_PARAMS = "b-adapt=0:scenecut=0"
GOP_FRAMES = 2 * FPS
AUDIO_RATE_HZ = 48000
AUDIO_BITRATE = "128k"


class RenderError(CloopsError):
    """Rendering a clip failed: FFmpeg is missing or unusable, or the encode failed.

    Attributes:
        file: the output file that was not written.
    """

    def __init__(self, message: str, *, file: str | None = None, fix: str | None = None):
        super().__init__(user_message(message, file=file, fix=fix))
        self.file = file
        self.fix = fix


def ffmpeg_exe() -> str:
    """Return the path of the FFmpeg binary (imageio-ffmpeg's, or ``IMAGEIO_FFMPEG_EXE``).

    Raises:
        RenderError: imageio-ffmpeg is not installed or has no binary for this platform.
    """
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RenderError("the imageio-ffmpeg package is not installed.",
                          fix="pip install imageio-ffmpeg (cloops depends on it: reinstall "
                              "cloops).") from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        raise RenderError("imageio-ffmpeg has no FFmpeg binary for this platform.",
                          fix="install a wheel of imageio-ffmpeg built for it, or set "
                              "IMAGEIO_FFMPEG_EXE to an FFmpeg with libx264 and aac.") from None


@lru_cache(maxsize=8)
def _checked(exe: str) -> None:
    try:
        out = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RenderError(f"cannot run FFmpeg at {exe} ({exc.__class__.__name__}).",
                          fix="reinstall imageio-ffmpeg, or unset/correct "
                              "IMAGEIO_FFMPEG_EXE.") from None
    missing = [enc for enc in ("libx264", "aac") if f" {enc} " not in out.stdout]
    if missing:
        raise RenderError(f"FFmpeg at {exe} lacks the encoder(s) {', '.join(missing)}.",
                          fix="unset IMAGEIO_FFMPEG_EXE to use imageio-ffmpeg's build, or "
                              "point it to an FFmpeg built with libx264.")


def check_ffmpeg() -> str:
    """Return the FFmpeg path after checking once per process that it runs and encodes
    H.264 (libx264) and AAC.

    Raises:
        RenderError: no FFmpeg, it does not run, or it lacks an encoder.
    """
    exe = ffmpeg_exe()
    _checked(exe)
    return exe


def video_output_args() -> list[str]:
    """The libx264 + MP4 output arguments every clip uses (deterministic, ``+faststart``)."""
    return [
        "-c:v", "libx264", "-preset", X264_PRESET, "-crf", str(X264_CRF),
        "-profile:v", "high", "-pix_fmt", "yuv420p", "-g", str(GOP_FRAMES),
        "-threads", str(X264_THREADS), "-x264-params", X264_PARAMS,
        "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
        "-color_range", "tv",
        "-c:a", "aac", "-b:a", AUDIO_BITRATE, "-ar", str(AUDIO_RATE_HZ), "-ac", "2",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
        "-map_metadata", "-1", "-map_chapters", "-1",
        "-movflags", "+faststart", "-f", "mp4",
    ]


# What the piped frames are (see cloops.services.media.frames): BT.709 limited range, chroma
# centre-sited. Tagging the frames themselves matters: FFmpeg (7.1 and later) negotiates colour
# properties in the filter graph, and untagged frames meeting an encoder told "bt709" get a
# swscale conversion inserted - a full-frame pass per frame for nothing - and an H.264 VUI
# saying "unknown" primaries. Tagged here, the frames reach libx264 untouched and the stream
# and the MP4's colr box both say BT.709, limited, chroma_sample_loc_type 1 (centre).
FRAME_PARAMS = ("setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709:"
                "chroma_location=center")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def encode_frames(out_path: str | os.PathLike, frame_count: int,
                  make_frame: Callable[[int], Sequence[bytes | memoryview]], *, inputs: Sequence[str] = (),
                  video_filter: str = "", audio_filter: str, duration_s: float,
                  sources: Sequence[str] = (), workers: int = 2, still: bool = False,
                  raster: Raster = FULL) -> None:
    """Encode ``frame_count`` yuv420p frames and an audio graph into ``out_path`` (MP4),
    atomically.

    ``make_frame(i)`` returns frame ``i`` as buffers whose concatenation is one yuv420p frame
    of ``raster`` (1080x1920 by default:
    :data:`~cloops.services.media.frames.FRAME_BYTES` = 3,110,400 bytes: the Y' plane, then
    Cb and Cr at 540x960, rows top to bottom, BT.709 limited range, chroma centre-sited): a
    frame whose still rows are shared need not be copied.

    ``inputs`` are FFmpeg input arguments after the frame pipe (input 0), e.g.
    ``["-i", "voice.mp3"]``; ``audio_filter`` is a filter graph ending in ``[a]``;
    ``video_filter`` filters ``[0:v]`` (e.g. a fade). ``still``: every frame is frame 0 (an
    end card): it crosses the pipe once and FFmpeg repeats it (``tpad``), so only the
    encoder works per frame. ``workers`` threads make frames ahead of the encoder (OpenCV and
    Pillow release the GIL while they resample); frames are written in order, so the output
    does not depend on their timing. ``sources`` name the input files in error messages.

    Raises:
        RenderError: FFmpeg missing or failed (the temp file is removed, the target untouched).
    """
    exe = check_ffmpeg()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    piped = 1 if still else frame_count
    vchain = FRAME_PARAMS + (f",tpad=stop={frame_count - 1}:stop_mode=clone" if still else "")
    vchain += f",{video_filter}" if video_filter else ""
    encoded = False
    try:
        # FFmpeg writes a temp file beside the clip, renamed into place once it succeeded
        with staged(out) as tmp, tempfile.TemporaryFile() as errlog:
            cmd = [
                exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                "-filter_threads", "1", "-filter_complex_threads", "1",
                "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", raster.label,
                "-framerate", str(FPS), "-i", "pipe:0",
                *inputs,
                "-filter_complex", f"[0:v]{vchain}[v];{audio_filter}",
                "-map", "[v]", "-map", "[a]",
                *video_output_args(),
                "-t", f"{duration_s:.6f}",
                str(tmp),
            ]
            with cpus.unpinned():  # FFmpeg and the frame pool: any processor (cloops.core.cpus)
                _run(cmd, errlog, out, piped, make_frame, workers, sources)
            encoded = True
    except OSError as exc:
        if not encoded:
            raise
        raise RenderError(f"cannot move the finished clip into place ({exc.strerror}).",
                          file=str(out), fix="check that the folder is writable and the "
                          "target is not a directory.") from None


def _run(cmd: list[str], errlog, out: Path, frame_count: int,
         make_frame: Callable[[int], Sequence[bytes | memoryview]], workers: int,
         sources: Sequence[str]) -> None:
    """Run FFmpeg on ``cmd``, feeding it the frames; on any failure FFmpeg is stopped.

    Raises:
        RenderError: FFmpeg could not start or failed (its last lines of ``errlog`` quoted).
    """
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=errlog, bufsize=0)
    except OSError as exc:
        raise RenderError(f"cannot start FFmpeg at {cmd[0]} ({exc.__class__.__name__}).",
                          file=str(out),
                          fix="reinstall imageio-ffmpeg, or correct IMAGEIO_FFMPEG_EXE."
                          ) from None
    _widen_pipe(proc.stdin.fileno())
    ok = False
    try:
        broken = _feed(proc, frame_count, make_frame, workers)
        proc.stdin.close()
        rc = proc.wait()
        if rc != 0 or broken:
            errlog.seek(0)
            tail = errlog.read().decode("utf-8", "replace").strip().splitlines()[-6:]
            what = f" from {', '.join(sources)}" if sources else ""
            raise RenderError(
                f"FFmpeg failed to encode the clip{what} (exit {rc}): "
                f"{' | '.join(tail) or 'no message'}",
                file=str(out),
                fix="check that the input files named above are readable audio/images; "
                    "CLOOPS_DEBUG=1 shows the whole command.")
        ok = True
    finally:
        if not ok:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if os.environ.get("CLOOPS_DEBUG"):
                print("ffmpeg command:", " ".join(cmd))


def _widen_pipe(fd: int) -> None:
    """Give the frame pipe a 1 MiB buffer (Linux; the default is 64 KiB): a 3 MB frame then
    crosses in 3 writes instead of 48, which saves both processes thousands of context
    switches per second of video. Best effort: elsewhere the default stays."""
    try:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


def _feed(proc: subprocess.Popen, frame_count: int,
          make_frame: Callable[[int], Sequence[bytes | memoryview]], workers: int) -> bool:
    """Write the frames to FFmpeg's stdin in order; True if FFmpeg closed its input early."""
    fd = proc.stdin.fileno()
    ahead = max(1, workers) * 2  # frames in flight: bounds memory to a few 3 MB frames
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        next_index = 0
        try:
            while next_index < frame_count or pending:
                while next_index < frame_count and len(pending) < ahead:
                    pending.append(pool.submit(make_frame, next_index))
                    next_index += 1
                for buf in pending.popleft().result():
                    _write_all(fd, buf)
        except BrokenPipeError:
            for fut in pending:
                fut.cancel()
            return True
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return False

