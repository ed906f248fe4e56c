"""The ``voice`` step kind: a script spoken by the voice service, with per-segment timings.

Layer: **graph**. ElevenLabs (or piper offline) speaks the step's segments in order; the MP3
is the target and the timings go to ``also[0]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.errors import InputError
from ...services.base import VoiceRequest, estimate_words
from ..steps import DepContext, FileInput, Fn, Step, StepRun, expand, short_value, step_kind


@step_kind("voice")
@dataclass(frozen=True)
class VoiceStep(Step):
    """A call to the voice service: speak a script into ``target`` (an MP3).

    Attributes:
        segments: ``segments(inputs, ctx) -> list[str]`` the texts to speak, in order (one per
            page); their start/end seconds are written to ``also[0]`` as
            ``{"durationS": float, "segments": [{"startS", "endS", "text"}],
            "words": [{"word", "startS", "endS"}], "wordsEstimated": bool}`` - each word's
            times from the provider's alignment (ElevenLabs), else estimated from the
            sentence or segment it is in (piper; an answer cached before words were kept).
    """

    service = "voice"

    segments: Fn | None = None

    def dependency_values(self, deps: DepContext) -> dict[str, str]:
        voice = deps.template.config.engine.voice
        values = {f"voice.{k}": short_value(getattr(voice, k))
                  for k in ("voice_id", "model", "output_format", "pause_s")}
        values["voice.settings"] = short_value(voice.settings.model_dump(exclude_none=True))
        return values

    def execute(self, job: StepRun) -> None:
        backend = job.services.backend("voice")
        segments = [s.strip() for s in self.segments(job.inputs, job.ctx)]
        if not segments or not all(segments):
            source = next((i.path for i in self.inputs.values() if isinstance(i, FileInput)),
                          job.rel)
            raise InputError("has an empty segment: every page needs narration text to speak.",
                             file=str(job.story_dir / source),
                             fix="write the missing narration, or delete the file to "
                                 "regenerate it.")
        cfg = job.template.config.engine.voice
        req = VoiceRequest(segments=tuple(segments), voice_id=cfg.voice_id, model=cfg.model,
                           output_format=cfg.output_format,
                           settings=cfg.settings.model_dump(exclude_none=True),
                           pause_s=cfg.pause_s, timeout_s=cfg.timeout_s)
        res = job.services.synthesize(req)
        made_by = f"{backend.name} {req.model}"
        job.write(job.rel, res.mp3, made_by=made_by, offline=backend.offline)
        if self.also:
            words, estimated = res.words, res.words_estimated
            if not words:
                words, estimated = estimate_words(segments, res.timings), True
            timings = {"durationS": round(res.duration_s, 3), "segments": [
                {"startS": round(a, 3), "endS": round(b, 3), "text": t}
                for (a, b), t in zip(res.timings, segments)],
                "words": [{"word": w, "startS": round(a, 3), "endS": round(b, 3)}
                          for w, a, b in words],
                "wordsEstimated": bool(estimated)}
            job.write(expand(self.also[0], job.ctx.n), timings, made_by=made_by,
                      offline=backend.offline)
