"""The sound of an ad component: the voice placed in time, the music bed ducked under it, one
loudness for every component, short fades at the edges, and the loudness measured.

Layer: **services**.

Every component with sound is made the same way (:func:`render_soundtrack`):

1. **mix** - a :class:`Soundtrack` says what plays: a voice file placed at an offset in the clip
   and/or a music file looped under it. Both are decoded by FFmpeg to 48 kHz stereo float PCM
   and mixed with numpy. The music sits ``duck_db`` below the voice while anyone speaks (both
   measured alone, ITU-R BS.1770 integrated loudness) and comes up to the voice's level where
   nobody speaks for longer than :data:`DUCK_GAP_S` (before the first word, after the last);
   the gain moves over :data:`DUCK_RAMP_S` so it never steps (BRIEF.md "Loudness": music under
   speech ~12 dB lower).
2. **normalize** - the mix is brought to ``target_lufs`` integrated (default -14 LUFS, what
   social delivery commonly targets) with its true peak at most ``true_peak_dbtp`` (default
   -1 dBTP): a linear gain from FFmpeg's ``ebur128`` measurement, then a limiter on the 4x
   oversampled signal (``alimiter`` with its delay compensated, so no sample moves in time)
   with :data:`ENCODE_MARGIN_DB` of headroom for the AAC encoder's overshoot. The mix is driven
   :data:`LIMITER_ALLOWANCE_LU` over the target (what the limiter takes back from the peaks)
   and brought down to it by a linear gain, which keeps the peaks under the ceiling; driven
   again only when the limiter took more (within :data:`LOUDNESS_TOLERANCE_LU` is enough).
3. **fade** - :data:`EDGE_FADE_S` in and out at the component's edges, so a cut from one
   component to the next joins two silences and does not click (the AAC priming samples at a
   join then decode to near-silence too).

The loudness that counts is measured again *after* the AAC encode (:func:`measure_file`): that
is what AdLoops receives, and what the manifest records. Sources: EBU R128 / ITU-R BS.1770-4
(integrated loudness, true peak, loudness range), FFmpeg filters ``ebur128`` (``peak=true``)
and ``alimiter`` (``latency``: "compensate delay") of the imageio-ffmpeg build.

Same inputs, same samples: every step is deterministic (FFmpeg's float resampler and limiter,
numpy sums in a fixed order), so the clips stay byte-identical from run to run.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...core import cpus
from ...core.errors import InputError
from ...core.fileio import staged
from ...core.turns import TASK_TURNS
from .ffmpeg import AUDIO_BITRATE, AUDIO_RATE_HZ, RenderError, check_ffmpeg

CHANNELS = 2
EDGE_FADE_S = 0.012          # fade in/out at a component's edges: no click at a cut
DUCK_RAMP_S = 0.15           # how fast the music goes down before speech / back up after it
DUCK_GAP_S = 1.5             # a pause shorter than this keeps the music ducked
ENCODE_MARGIN_DB = 1.0       # limiter ceiling below the true-peak limit: room for AAC's overshoot
LOUDNESS_TOLERANCE_LU = 0.3  # the normalizer's aim: within this of the target before encoding
LIMITER_ALLOWANCE_LU = 1.5   # what the limiter is expected to take back: the drive above target
SILENCE_LUFS = -70.0         # BS.1770's absolute gate: quieter than this is silence


@dataclass(frozen=True)
class Loudness:
    """A loudness measurement (EBU R128 / ITU-R BS.1770-4, FFmpeg ``ebur128=peak=true``).

    Attributes:
        integrated_lufs: integrated loudness, LUFS (None: silence, below -70 LUFS).
        true_peak_dbtp: maximum true peak, dBTP (None: silence, or measured without it).
        lra_lu: loudness range, LU (0 for a short or steady signal).
    """

    integrated_lufs: float | None
    true_peak_dbtp: float | None
    lra_lu: float | None

    def as_json(self) -> dict:
        """``{"integratedLufs", "truePeakDbtp", "lraLu"}`` rounded to 0.1 (the meter's own
        resolution)."""
        def r(v):
            return None if v is None else round(v, 1)
        return {"integratedLufs": r(self.integrated_lufs), "truePeakDbtp": r(self.true_peak_dbtp),
                "lraLu": r(self.lra_lu)}

    @property
    def silent(self) -> bool:
        return self.integrated_lufs is None


@dataclass(frozen=True)
class Soundtrack:
    """What a component's audio is made of (times in seconds of the component).

    Attributes:
        voice: a voice file (MP3, WAV, ...) or None.
        voice_offset_s: where the voice file's 0 s lands in the component (negative: its first
            ``-voice_offset_s`` seconds are cut), after ``voice_tempo``.
        voice_tempo: how much faster than recorded the voice plays (1: as recorded; a spoken
            line fitted into its clip), pitch kept.
        speech: the windows in which the voice speaks, in component time (from its timings):
            the music is ducked under them and a component's speech start is the first one.
        music: a music file looped under the voice (or alone), or None.
        duck_db: how far the music sits below the voice while it speaks, dB.
        target_lufs: integrated loudness every component is brought to, LUFS.
        true_peak_dbtp: the true-peak limit, dBTP.
    """

    voice: str | None = None
    voice_offset_s: float = 0.0
    voice_tempo: float = 1.0
    speech: tuple[tuple[float, float], ...] = ()
    music: str | None = None
    duck_db: float = 12.0
    target_lufs: float = -14.0
    true_peak_dbtp: float = -1.0

    @property
    def kind(self) -> str:
        """``"voice"`` (a voice, with or without music), ``"music"`` (the bed alone) or
        ``"silent"``."""
        return "voice" if self.voice else "music" if self.music else "silent"

    @property
    def speech_start_s(self) -> float | None:
        """When speech starts in the component (None: no speech)."""
        return min((s for s, _e in self.speech), default=None) if self.voice else None


@dataclass
class Rendered:
    """A soundtrack made ready to encode: ``path`` (raw 48 kHz stereo f32le PCM, or None for
    silence), what it is (``kind``), its loudness before encoding, and the limiter ceiling
    used (dBTP), which a caller lowers when the encoded peak comes out over the limit."""

    path: Path | None
    kind: str
    loudness: Loudness | None
    ceiling_dbtp: float | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- FFmpeg helpers

def _ffmpeg(args: Sequence[str], *, data: bytes | None = None, what: str,
            file: str | None = None, fix: str | None = None) -> subprocess.CompletedProcess:
    """Run FFmpeg; raise :class:`RenderError` naming ``what`` (and ``file``) on failure."""
    exe = check_ffmpeg()
    try:
        # FFmpeg works, on any processor (cloops.core.cpus); this thread waits
        with TASK_TURNS.released(), cpus.unpinned():
            proc = subprocess.run([exe, "-hide_banner", "-nostdin", *args], input=data,
                                  capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RenderError(f"FFmpeg could not {what} ({exc.__class__.__name__}).", file=file,
                          fix=fix) from None
    if proc.returncode != 0:
        tail = [line.split("] ", 1)[-1] for line in
                proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]]
        raise RenderError(f"FFmpeg failed to {what}: {' | '.join(tail) or 'no message'}",
                          file=file, fix=fix)
    return proc


def _raw_input(path: Path | str) -> list[str]:
    return ["-f", "f32le", "-ar", str(AUDIO_RATE_HZ), "-ac", str(CHANNELS), "-i", str(path)]


def decode(path: str | Path, *, tempo: float = 1.0) -> np.ndarray:
    """Decode an audio file (or a video's audio) to float32 PCM, shape ``(samples, 2)`` at
    48 kHz; ``tempo`` > 1 speeds it up without changing its pitch (FFmpeg ``atempo``, 0.5-2).

    Raises:
        InputError: the file does not exist.
        RenderError: FFmpeg cannot decode it (names the file).
    """
    return _decode(path, tempo, measure=False)[0]


def decode_measured(path: str | Path, *, tempo: float = 1.0) -> tuple[np.ndarray, Loudness]:
    """:func:`decode` and the decoded signal's loudness (``ebur128`` at the end of the same
    FFmpeg run's filter chain, on the 48 kHz stereo samples returned; no true peak): one
    process instead of two.

    Raises:
        InputError, RenderError: as :func:`decode`.
    """
    pcm, log = _decode(path, tempo, measure=True)
    return pcm, _parse_summary(log) if pcm.size else Loudness(None, None, 0.0)


def _decode(path: str | Path, tempo: float, *, measure: bool) -> tuple[np.ndarray, str]:
    """The decoded samples and FFmpeg's log (``ebur128``'s summary with ``measure``)."""
    if not Path(path).is_file():
        raise InputError("the audio file does not exist.", file=str(path),
                         fix="build it first (run doit), or correct the path.")
    chain = [f"atempo={tempo:.6f}"] if abs(tempo - 1.0) > 1e-9 else []
    if measure:  # the meter sees what is returned: resampled to 48 kHz stereo first
        chain = [*chain, f"aresample={AUDIO_RATE_HZ}", "aformat=channel_layouts=stereo",
                 _meter(False)]
    log = ["-nostats", "-loglevel", "info"] if measure else ["-loglevel", "error"]
    proc = _ffmpeg([*log, "-i", str(path), "-map", "0:a:0", "-vn",
                    *(["-af", ",".join(chain)] if chain else []),
                    "-f", "f32le", "-acodec", "pcm_f32le", "-ar", str(AUDIO_RATE_HZ),
                    "-ac", str(CHANNELS), "pipe:1"], what="decode its audio", file=str(path),
                   fix="replace it with a readable MP3, WAV or M4A (or delete it and run "
                       "doit to make it again).")
    pcm = np.frombuffer(proc.stdout, dtype="<f4").reshape(-1, CHANNELS).copy()
    return pcm, proc.stderr.decode("utf-8", "replace")


_NUM = r"(-?(?:\d+(?:\.\d+)?|inf)|nan)"


def _parse_summary(log: str) -> Loudness:
    """Read the integrated loudness, loudness range and true peak from ``ebur128``'s summary."""
    def last(pattern: str) -> float | None:
        found = re.findall(pattern, log)
        if not found:
            return None
        try:
            value = float(found[-1])
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    i = last(rf"I:\s+{_NUM} LUFS")
    lra = last(rf"LRA:\s+{_NUM} LU\b")
    tp = last(rf"Peak:\s+{_NUM} dBFS")
    if i is None or i <= SILENCE_LUFS:
        return Loudness(None, None, lra or 0.0)
    return Loudness(i, tp, lra)


def _meter(peak: bool) -> str:
    """The ``ebur128`` filter: with ``peak`` it also measures the true peak (on a 4x
    oversampled copy of the signal, a third of the meter's cost); without, only loudness."""
    return f"ebur128={'peak=true:' if peak else ''}framelog=quiet"


def _measure(args: list[str], data: bytes | None, what: str, *, peak: bool = True) -> Loudness:
    proc = _ffmpeg(["-nostats", "-loglevel", "info", *args,
                    "-af", _meter(peak), "-f", "null", "-"],
                   data=data, what=what)
    return _parse_summary(proc.stderr.decode("utf-8", "replace"))


def measure_pcm(pcm: np.ndarray, *, peak: bool = True) -> Loudness:
    """Measure float PCM (``(samples, 2)`` at 48 kHz) with FFmpeg's ``ebur128``; without
    ``peak`` the true peak is not measured (``true_peak_dbtp`` None) and the run is cheaper.

    Raises:
        RenderError: FFmpeg failed.
    """
    if pcm.size == 0:
        return Loudness(None, None, 0.0)
    return _measure(_raw_input("pipe:0"), np.ascontiguousarray(pcm, "<f4").tobytes(),
                    "measure the loudness of a mix", peak=peak)


def measure_file(path: str | Path) -> Loudness:
    """Measure the audio of a media file as a player decodes it (the AAC of an MP4/M4A).

    Raises:
        RenderError: FFmpeg cannot read it.
    """
    return _measure(["-i", str(path), "-map", "0:a:0"], None, f"measure the loudness of {path}")


# ---------------------------------------------------------------- mixing

def _place(pcm: np.ndarray, offset_s: float, total: int) -> np.ndarray:
    """``pcm`` placed at ``offset_s`` in a silence of ``total`` samples (cut to fit)."""
    out = np.zeros((total, CHANNELS), dtype=np.float32)
    at = round(offset_s * AUDIO_RATE_HZ)
    src = pcm[max(0, -at):]
    at = max(0, at)
    n = max(0, min(len(src), total - at))
    out[at:at + n] = src[:n]
    return out


def _loop(pcm: np.ndarray, total: int) -> np.ndarray:
    if len(pcm) == 0:
        return np.zeros((total, CHANNELS), dtype=np.float32)
    reps = -(-total // len(pcm))
    return np.tile(pcm, (reps, 1))[:total]


def speech_windows(spans: Sequence[tuple[float, float]], gap_s: float = DUCK_GAP_S
                   ) -> list[tuple[float, float]]:
    """Speech spans (seconds, any order) merged where the pause between them is shorter than
    ``gap_s``: the windows the music stays ducked in."""
    out: list[list[float]] = []
    for s, e in sorted((float(a), float(b)) for a, b in spans if b > a):
        if out and s - out[-1][1] < gap_s:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(a, b) for a, b in out]


def duck_gain(total: int, windows: Sequence[tuple[float, float]], duck_db: float) -> np.ndarray:
    """The music's gain per sample (``(total,)``): 1 outside ``windows``, ``-duck_db`` dB inside,
    moving linearly over :data:`DUCK_RAMP_S` (down before a window starts, up after it ends)."""
    rate = AUDIO_RATE_HZ
    mask = np.zeros(total + 1, dtype=np.float64)
    ramp = max(1, round(DUCK_RAMP_S * rate))
    for s, e in windows:
        a = max(0, round(s * rate) - ramp)
        b = min(total, round(e * rate))
        if b > a:
            mask[a:b] = 1.0
    # a moving average over the ramp turns each edge into a linear ramp of that length
    csum = np.concatenate([[0.0], np.cumsum(mask)])
    idx = np.arange(total)
    hi = np.minimum(idx + ramp, total + 1)
    smooth = (csum[hi] - csum[idx]) / (hi - idx)
    floor = 10 ** (-float(duck_db) / 20)
    return (1.0 - (1.0 - floor) * smooth).astype(np.float32)


def fade_edges(pcm: np.ndarray, fade_s: float = EDGE_FADE_S) -> np.ndarray:
    """``pcm`` faded in and out linearly over ``fade_s`` at both ends (in place; returned)."""
    n = min(len(pcm) // 2, round(fade_s * AUDIO_RATE_HZ))
    if n > 0:
        ramp = (np.arange(n, dtype=np.float32) / n)[:, None]
        pcm[:n] *= ramp
        pcm[-n:] *= ramp[::-1]
    return pcm


def _gain(db: float) -> float:
    return float(10 ** (db / 20))


@dataclass
class Mixed:
    """A soundtrack's samples before normalization: ``pcm`` (``(samples, 2)`` float32, or None
    for silence), notes for the run's output, and ``about`` - the loudness of the voice or the
    bed alone as its file decoded, when the mix is that alone (None when it must be measured):
    the normalizer's first drive is picked from it, and every later step from measurements
    of the limited signal itself."""

    pcm: np.ndarray | None
    notes: list[str]
    about: Loudness | None = None


def mix(track: Soundtrack, duration_s: float) -> Mixed:
    """The soundtrack's samples for ``duration_s`` seconds, before normalization
    (:class:`Mixed`). Each file is decoded and measured in one FFmpeg run
    (:func:`decode_measured`): the bed is set as loud as the voice from those figures.

    Raises:
        InputError: a file is missing. RenderError: FFmpeg cannot decode one.
    """
    total = round(duration_s * AUDIO_RATE_HZ)
    notes: list[str] = []
    voice = music = None
    lv = lm = None
    if track.voice:
        said, lv = decode_measured(track.voice, tempo=track.voice_tempo)
        voice = _place(said, track.voice_offset_s, total)
    if track.music:
        bed, lm = decode_measured(track.music)
        music = _loop(bed, total)
    if voice is None:
        return Mixed(music, notes, lm)
    if music is None:
        return Mixed(voice, notes, lv)
    if lm.silent:
        notes.append(f"the music file {Path(track.music).name} is silent")
        return Mixed(voice, notes, lv)
    if lv.silent:  # nothing is said: the bed alone
        return Mixed(music, notes, lm)
    # the bed as loud as the voice, ducked under its speech by duck_db
    music *= _gain(lv.integrated_lufs - lm.integrated_lufs)
    music *= duck_gain(total, speech_windows(track.speech), track.duck_db)[:, None]
    return Mixed(voice + music, notes)


def _limited(pcm: np.ndarray, gain_db: float, ceiling_dbtp: float) -> tuple[np.ndarray, Loudness]:
    """``pcm`` with ``gain_db`` applied and its peaks held under ``ceiling_dbtp``, limited on the
    4x oversampled signal (an approximation of a true-peak limiter) with the limiter's delay
    compensated - same length, same timing - and its loudness (``ebur128`` at the end of the
    same FFmpeg graph: one process for both; no true peak: the one that counts is measured
    after encoding)."""
    limit = min(1.0, max(0.0625, _gain(ceiling_dbtp)))
    chain = (f"volume={gain_db:.4f}dB:precision=double,aresample={AUDIO_RATE_HZ * 4},"
             f"alimiter=limit={limit:.6f}:attack=1:release=60:level=0:latency=1,"
             f"aresample={AUDIO_RATE_HZ},{_meter(False)}")
    proc = _ffmpeg(["-nostats", "-loglevel", "info", *_raw_input("pipe:0"), "-af", chain,
                    "-f", "f32le", "-ac", str(CHANNELS), "pipe:1"],
                   data=np.ascontiguousarray(pcm, "<f4").tobytes(), what="normalize a mix")
    loud = _parse_summary(proc.stderr.decode("utf-8", "replace"))
    out = np.frombuffer(proc.stdout, dtype="<f4").reshape(-1, CHANNELS)
    if len(out) >= len(pcm):
        return out[:len(pcm)].copy(), loud
    return np.concatenate([out, np.zeros((len(pcm) - len(out), CHANNELS), np.float32)]), loud


def _lowered(pcm: np.ndarray, loud: Loudness, db: float) -> tuple[np.ndarray, Loudness]:
    """``pcm`` made ``db`` (>= 0) quieter by a linear gain, and its loudness then: integrated
    loudness moves by exactly the gain (BS.1770's relative gate moves with the signal), and
    every peak goes down with it, so a limited signal stays under its ceiling."""
    if db <= 0:
        return pcm, loud
    pcm *= np.float32(_gain(-db))
    peak = None if loud.true_peak_dbtp is None else loud.true_peak_dbtp - db
    return pcm, Loudness(loud.integrated_lufs - db, peak, loud.lra_lu)


def normalize(pcm: np.ndarray, target_lufs: float, true_peak_dbtp: float, *,
              ceiling_dbtp: float | None = None,
              about: Loudness | None = None) -> tuple[np.ndarray, Loudness, float]:
    """Bring ``pcm`` to ``target_lufs`` with its true peak under ``ceiling_dbtp`` (default
    ``true_peak_dbtp - ENCODE_MARGIN_DB``). Returns ``(pcm, loudness, ceiling)`` (the loudness
    without a true peak: that is measured after encoding); a silent input comes back
    unchanged.

    The limiter takes some loudness back from the peaks it holds down, so the mix is driven
    :data:`LIMITER_ALLOWANCE_LU` above the target through it and then brought down to the
    target exactly by a linear gain (:func:`_lowered`): one limiter run for most mixes. When
    the limiter took more than that, the next drive is a secant step from the last two runs.
    ``about``: the signal's loudness as already known (:class:`Mixed`), which spares the
    first measurement; the first drive is picked from it, every later step from the limited
    signal's own measurement, so an approximate figure costs at most one more run.

    Raises:
        RenderError: FFmpeg failed.
    """
    ceiling = true_peak_dbtp - ENCODE_MARGIN_DB if ceiling_dbtp is None else ceiling_dbtp
    before = about if about is not None else measure_pcm(pcm, peak=False)
    if before.silent:
        return pcm, before, ceiling
    aim = target_lufs + LIMITER_ALLOWANCE_LU
    gain = aim - before.integrated_lufs
    out, now = pcm, before
    last: tuple[float, float] | None = None  # (gain, loudness) of the previous run
    for _ in range(4):
        out, now = _limited(pcm, gain, ceiling)
        if now.silent:
            break
        if now.integrated_lufs >= target_lufs:  # loud enough: come down to the target
            return (*_lowered(out, now, now.integrated_lufs - target_lufs), ceiling)
        if target_lufs - now.integrated_lufs <= LOUDNESS_TOLERANCE_LU:
            break  # a hair under: close enough (a linear gain up would lift the peaks)
        # the louder the drive, the more the limiter takes back: step by the slope the last
        # two runs measured (a secant step), 1 dB per LU after the first
        slope = 1.0
        if last is not None and abs(gain - last[0]) > 1e-6:
            slope = (now.integrated_lufs - last[1]) / (gain - last[0])
            slope = min(1.0, max(0.25, slope))
        last = (gain, now.integrated_lufs)
        gain += (aim - now.integrated_lufs) / slope
    return out, now, ceiling


def render_soundtrack(track: Soundtrack, duration_s: float, folder: Path, *,
                      ceiling_dbtp: float | None = None) -> Rendered:
    """Mix, normalize and fade ``track`` for ``duration_s`` seconds into ``folder/audio.f32``
    (raw 48 kHz stereo float PCM, what :func:`audio_input` feeds FFmpeg). Silence writes no
    file (``path`` None).

    Raises:
        InputError: a file is missing. RenderError: FFmpeg failed.
    """
    mixed = mix(track, duration_s)
    pcm, notes = mixed.pcm, mixed.notes
    if pcm is None:
        return Rendered(None, "silent", None, notes=notes)
    pcm, loud, ceiling = normalize(pcm, track.target_lufs, track.true_peak_dbtp,
                                   ceiling_dbtp=ceiling_dbtp, about=mixed.about)
    if loud.silent:
        return Rendered(None, "silent", None, notes=notes + ["the soundtrack is silent"])
    fade_edges(pcm)
    path = Path(folder) / "audio.f32"
    path.write_bytes(np.ascontiguousarray(pcm, "<f4").tobytes())
    return Rendered(path, track.kind, loud, ceiling, notes)


def audio_input(rendered: Rendered, duration_s: float) -> tuple[list[str], str]:
    """FFmpeg input arguments for a rendered soundtrack (the input after the frame pipe,
    index 1) and an audio graph ending in ``[a]``; silence when there is no file."""
    if rendered.path is None:
        return (["-f", "lavfi", "-t", f"{duration_s:.6f}", "-i",
                 f"anullsrc=r={AUDIO_RATE_HZ}:cl=stereo"], "[1:a]anull[a]")
    return _raw_input(rendered.path), "[1:a]anull[a]"


def aac_args() -> list[str]:
    """The AAC encoder arguments every component uses (48 kHz stereo, deterministic)."""
    return ["-c:a", "aac", "-b:a", AUDIO_BITRATE, "-ar", str(AUDIO_RATE_HZ), "-ac", "2",
            "-flags:a", "+bitexact"]


def encode_m4a(rendered: Rendered, out_path: str | Path) -> None:
    """Encode a rendered soundtrack as AAC in an M4A (MP4 audio, ``+faststart``), atomically.

    Raises:
        RenderError: nothing to encode (silence), or FFmpeg failed (nothing left at the path).
    """
    if rendered.path is None:
        raise RenderError("an audio component cannot be silent.", file=str(out_path))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged(out) as tmp:
        _ffmpeg(["-loglevel", "error", "-y", *_raw_input(rendered.path), *aac_args(),
                 "-fflags", "+bitexact", "-map_metadata", "-1", "-movflags", "+faststart",
                 "-f", "mp4", str(tmp)], what=f"encode {out.name}")


def encode_silence(duration_s: float, out_path: str | Path) -> None:
    """An M4A of ``duration_s`` seconds of silence (48 kHz stereo AAC), atomically: an audio
    component whose source is silent.

    Raises:
        RenderError: FFmpeg failed.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged(out) as tmp:
        _ffmpeg(["-loglevel", "error", "-y", "-f", "lavfi", "-t", f"{duration_s:.6f}", "-i",
                 f"anullsrc=r={AUDIO_RATE_HZ}:cl=stereo", *aac_args(), "-fflags", "+bitexact",
                 "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4", str(tmp)],
                what=f"encode {out.name}")


def remux_audio(video_path: str | Path, rendered: Rendered, out_path: str | Path) -> None:
    """Replace a clip's audio with ``rendered`` (the video stream copied, not re-encoded),
    atomically. Used when the first encode's true peak came out over the limit.

    Raises:
        RenderError: FFmpeg failed.
    """
    out = Path(out_path)
    with staged(out) as tmp:
        _ffmpeg(["-loglevel", "error", "-y", "-i", str(video_path), *_raw_input(rendered.path),
                 "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", *aac_args(),
                 "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
                 "-map_chapters", "-1", "-movflags", "+faststart", "-f", "mp4", str(tmp)],
                what=f"put the normalized audio into {out.name}")


def finish_loudness(track: Soundtrack, rendered: Rendered, duration_s: float,
                    encoded: Path, scratch: Path, *,
                    reencode: Callable[[Rendered], None]) -> Loudness | None:
    """Measure ``encoded`` (a clip or an M4A just written) and, while its true peak is over
    the limit (the AAC encoder overshoots a little), lower the limiter's ceiling by the excess
    and encode the audio again through ``reencode(rendered)``. Returns what the file measures
    (None: silent), at most three tries.

    Raises:
        RenderError: FFmpeg failed.
    """
    if rendered.path is None:
        return None
    loud = measure_file(encoded)
    for _ in range(3):
        if loud.silent or loud.true_peak_dbtp is None or \
                loud.true_peak_dbtp <= track.true_peak_dbtp:
            break
        ceiling = (rendered.ceiling_dbtp or track.true_peak_dbtp) - \
            (loud.true_peak_dbtp - track.true_peak_dbtp) - 0.2
        rendered = render_soundtrack(track, duration_s, scratch, ceiling_dbtp=ceiling)
        reencode(rendered)
        loud = measure_file(encoded)
    return loud


def temp_folder() -> tempfile.TemporaryDirectory:
    """A scratch folder for a render's intermediate audio."""
    return tempfile.TemporaryDirectory(prefix="cloops-audio-")
