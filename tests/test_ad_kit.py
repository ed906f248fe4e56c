"""The ad kit, probed as AdLoops receives it: CTA end cards, voiced hooks, one loudness for every
component, the overlay modes, posters and word timings - and the cut AdLoops makes (hook +
body + CTA joined with FFmpeg's concat, by stream copy and re-encoded).

Everything is rendered here from a real piper voice and a synthetic music bed, then measured
with FFmpeg's EBU R128 meter (``ebur128=peak=true``) on the decoded AAC."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cloops.services.base import VoiceRequest, estimate_words
from cloops.services.elevenlabs_backend import words_from_alignment
from cloops.services.media import (BUTTON_ZONE_TOP_PX, SAFE_AREA, BodyPage, Box, Soundtrack,
                                   measure_file, probe, render_body_clip, render_cta_clip,
                                   render_hook_clip)
from cloops.services.media.audio import decode, measure_pcm
from cloops.services.media.ffmpeg import ffmpeg_exe
from cloops.services.piper_backend import PiperBackend, split_sentences

from test_media import assert_vertical_clip, diff_box, frames_of, grid_page, sha

TARGET, PEAK = -14.0, -1.0
RATE = 48000
LINE = "Would you build a boat on dry land?"
PAGES = ["God told Noah to build an ark. A great flood was coming.",
         "The animals came two by two. Then the rain began."]


def cover() -> Image.Image:
    img = Image.new("RGB", (1152, 2048), (40, 90, 150))
    draw = ImageDraw.Draw(img)
    for k in range(0, 2048, 64):
        draw.rectangle((0, k, 1152, k + 30), fill=(200 - k // 16, 150, 80))
    draw.ellipse((300, 600, 850, 1300), fill=(240, 220, 120), outline="white", width=12)
    return img


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict:
    """A hook (voiced, overlay both), a body (voice + music bed, separate, with the audio
    components) and a CTA (voiced, both), and what they were made from."""
    d = tmp_path_factory.mktemp("kit")
    grid_page().save(d / "page.png")
    cover().save(d / "cover.jpg", quality=92)
    piper = PiperBackend()
    spoken = piper.synthesize(VoiceRequest(segments=(LINE,), voice_id="-", model="-"))
    (d / "line.mp3").write_bytes(spoken.mp3)
    cta_take = piper.synthesize(VoiceRequest(segments=("Read the whole story",),
                                             voice_id="-", model="-"))
    (d / "cta.mp3").write_bytes(cta_take.mp3)
    narration = piper.synthesize(VoiceRequest(segments=tuple(PAGES), voice_id="-", model="-",
                                              pause_s=0.6))
    (d / "voice.mp3").write_bytes(narration.mp3)
    # a music bed: two soft chords, 2.5 s, looped under the clips
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "aevalsrc=0.2*sin(2*PI*220*t)+0.15*sin(2*PI*277*t)+0.1*sin(2*PI*330*t)"
                    ":s=44100:d=2.5", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "128k",
                    str(d / "music.mp3")], check=True)

    def line_track(take, at_s: float, music: bool = False) -> Soundtrack:
        start, end = take.timings[0]
        offset = at_s - start
        return Soundtrack(voice=str(d / ("line.mp3" if take is spoken else "cta.mp3")),
                          voice_offset_s=offset, speech=((start + offset, end + offset),),
                          music=str(d / "music.mp3") if music else None)

    hook = render_hook_clip(d / "page.png", d / "hook-1.mp4", line=LINE, duration_s=3.0,
                            crop_box=(20, 20, 580, 300), overlay="both",
                            soundtrack=line_track(spoken, 0.25, music=True),
                            poster_path=d / "hook-1.jpg")
    pages = [BodyPage(d / "page.png", t, a, b) for t, (a, b) in zip(PAGES, narration.timings)]
    body = render_body_clip(pages, d / "body.mp4", voice_mp3=d / "voice.mp3",
                            music_path=d / "music.mp3",
                            speech=[(a, b) for _w, a, b in narration.words],
                            overlay="separate", poster_path=d / "body.jpg",
                            voice_out=d / "voice.m4a", music_out=d / "music.m4a",
                            min_s=4, max_s=20)
    cta = render_cta_clip(d / "cover.jpg", d / "cta-1.mp4", title="Noah's Ark",
                          line="Read the whole story", duration_s=3.0, overlay="both",
                          soundtrack=line_track(cta_take, 0.3), poster_path=d / "cta-1.jpg")
    silent_cta = render_cta_clip(d / "cover.jpg", d / "cta-silent.mp4", title="Noah's Ark",
                                 line="Read the whole story", duration_s=3.0,
                                 overlay="separate")
    return {"dir": d, "hook": hook, "body": body, "cta": cta, "silent_cta": silent_cta,
            "spoken": spoken, "narration": narration, "cta_take": cta_take}


def audio_of(path) -> np.ndarray:
    """The decoded audio of a clip: float32 (samples, 2) at 48 kHz."""
    return decode(path)


# ---------------------------------------------------------------- each component


def test_every_component_is_at_one_loudness_measured_after_encoding(kit):
    d = kit["dir"]
    files = [d / "hook-1.mp4", d / "hook-1-clean.mp4", d / "body.mp4", d / "cta-1.mp4",
             d / "cta-1-clean.mp4", d / "voice.m4a", d / "music.m4a"]
    for path in files:
        loud = measure_file(path)
        assert abs(loud.integrated_lufs - TARGET) <= 1.0, (path.name, loud)
        assert loud.true_peak_dbtp <= PEAK, (path.name, loud)
    # what each render reports is what the file measures
    for clip in (kit["hook"], kit["body"], kit["cta"]):
        assert clip.loudness == measure_file(clip.path)
    assert kit["body"].voice_loudness == measure_file(d / "voice.m4a")
    assert (kit["hook"].audio, kit["body"].audio, kit["cta"].audio) == ("voice",) * 3
    assert kit["silent_cta"].audio == "silent" and kit["silent_cta"].loudness is None


def test_durations_are_as_configured_and_the_audio_components_follow_the_body(kit):
    d = kit["dir"]
    assert_vertical_clip(d / "hook-1.mp4", 3.0)
    assert_vertical_clip(d / "hook-1-clean.mp4", 3.0)
    assert_vertical_clip(d / "cta-1.mp4", 3.0)
    body = kit["body"]
    assert_vertical_clip(d / "body.mp4", body.duration_s)
    for name in ("voice.m4a", "music.m4a"):
        info = probe(d / name)
        assert info["codecs"] == ["aac"] and info["faststart"] is True
        assert info["duration_s"] == pytest.approx(body.duration_s, abs=1 / 30)


def test_a_voiced_hook_speaks_within_half_a_second(kit):
    hook = kit["hook"]
    assert hook.speech_start_s == pytest.approx(0.25)
    voice_only = render_hook_clip(kit["dir"] / "page.png", kit["dir"] / "voice-only.mp4",
                                  line=LINE, duration_s=3.0,
                                  soundtrack=Soundtrack(
                                      voice=str(kit["dir"] / "line.mp3"),
                                      voice_offset_s=0.25 - kit["spoken"].timings[0][0],
                                      speech=((0.25, 3.0),)))
    x = np.abs(audio_of(voice_only.path)).max(axis=1)
    first = int(np.argmax(x > 0.02))
    assert 0 < first / RATE <= 0.5  # the first word, not the clip's start
    assert x[:int(0.2 * RATE)].max() < 0.02  # silence before it


def test_music_is_ducked_under_speech(kit):
    """In the body, the bed is 12 dB (musicDuckDb) under the voice while it speaks and comes
    up where nobody speaks (after the last word)."""
    d = kit["dir"]
    voice = decode(d / "voice.mp3")
    mix = audio_of(d / "body.mp4")
    last_word = kit["narration"].words[-1][2]
    speaking = mix[int(1.0 * RATE):int(2.0 * RATE)]
    after = mix[int((last_word + 0.5) * RATE):int((last_word + 0.5 + 0.5) * RATE)]
    assert len(after) > RATE // 4
    assert len(voice) > 0
    # the bed alone after the speech is louder than the mix's bed under it: compare the bed's
    # 220 Hz partial, which the voice barely has
    def partial(seg, hz=220.0):
        mono = seg.mean(axis=1)
        spec = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
        return float(spec[int(round(hz * len(mono) / RATE))]) / len(mono)
    assert partial(after) > 2.5 * partial(speaking)  # at least 8 dB up once speech ends


def test_a_cta_card_keeps_its_text_in_the_safe_box_and_the_bottom_free(kit):
    d = kit["dir"]
    baked = frames_of(d / "cta-1.mp4", [0, 45, 89])
    clean = frames_of(d / "cta-1-clean.mp4", [0, 45, 89])
    for a, b in zip(baked, clean):
        box = diff_box(a, b)
        assert box is not None and SAFE_AREA.contains(box), box
        assert box.bottom <= BUTTON_ZONE_TOP_PX
    png = np.asarray(Image.open(d / "cta-1-overlay.png").getchannel("A"))
    ys, xs = np.nonzero(png)
    assert SAFE_AREA.contains(Box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    assert not png[BUTTON_ZONE_TOP_PX:].any()  # nothing in the bottom 35 %
    boxes = [b.box for b in kit["cta"].text_boxes]
    assert [b.text for b in kit["cta"].text_boxes] == ["Noah's Ark", "Read the whole story"]
    assert all(SAFE_AREA.contains(b) for b in boxes)


def test_both_gives_the_baked_clip_the_clean_clip_and_the_overlay(kit):
    d = kit["dir"]
    for stem in ("hook-1", "cta-1"):
        assert (d / f"{stem}.mp4").is_file() and (d / f"{stem}-clean.mp4").is_file()
        assert (d / f"{stem}-overlay.png").is_file()
    # the clean rendition has not a text pixel: it is the separate render's clip, byte for byte
    take = kit["cta_take"]
    offset = 0.3 - take.timings[0][0]
    again = render_cta_clip(d / "cover.jpg", d / "cta-sep.mp4", title="Noah's Ark",
                            line="Read the whole story", duration_s=3.0, overlay="separate",
                            soundtrack=Soundtrack(voice=str(d / "cta.mp3"), voice_offset_s=offset,
                                                  speech=((0.3, take.timings[0][1] + offset),)))
    assert again.clean_path is None and again.overlay_path is not None
    assert sha(d / "cta-sep.mp4") == sha(d / "cta-1-clean.mp4")
    assert sha(d / "cta-1-clean.mp4") != sha(d / "cta-1.mp4")
    body = kit["body"]
    assert body.vtt_path.read_text().startswith("WEBVTT") and body.clean_path is None


def test_posters_are_1080x1920_frames_of_the_clip(kit):
    d = kit["dir"]
    for name in ("hook-1.jpg", "body.jpg", "cta-1.jpg"):
        img = Image.open(d / name)
        assert img.size == (1080, 1920) and img.format == "JPEG"
    # the hook's poster shows its line (it differs from the clean frame in the text's box)
    poster = np.asarray(Image.open(d / "hook-1.jpg").convert("RGB"))
    clean = frames_of(d / "hook-1-clean.mp4", [30])[0]
    box = diff_box(poster, clean, block=4)  # exact against decoded: compare 4x4 means
    assert box is not None and SAFE_AREA.contains(box)


def test_text_boxes_are_where_the_text_is(kit):
    hook = kit["hook"]
    [tb] = hook.text_boxes
    assert tb.text == LINE and tb.start_s == 0.0 and tb.end_s == pytest.approx(3.0)
    assert SAFE_AREA.contains(tb.box)
    body = kit["body"]
    assert [b.text for b in body.text_boxes] == [c.text for c in body.cues]
    assert body.text_boxes[0].start_s <= 1.5


# ---------------------------------------------------------------- the cut AdLoops makes


def _concat(d, parts, out, *, copy: bool) -> None:
    listing = d / f"{out.stem}.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    codec = ["-c", "copy"] if copy else ["-c:v", "libx264", "-preset", "ultrafast",
                                         "-c:a", "aac", "-b:a", "128k"]
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i",
                    str(listing), *codec, str(out)], check=True)


def _max_jump(x: np.ndarray) -> float:
    return float(np.abs(np.diff(x, axis=0)).max()) if len(x) > 1 else 0.0


@pytest.mark.parametrize("copy", [True, False], ids=["stream-copy", "re-encoded"])
def test_hook_body_cta_cut_together_joins_cleanly_at_one_level(kit, copy):
    d = kit["dir"]
    parts = [d / "hook-1.mp4", d / "body.mp4", d / "cta-1.mp4"]
    out = d / f"ad-{'copy' if copy else 'encoded'}.mp4"
    _concat(d, parts, out, copy=copy)
    lengths = [probe(p)["video_duration_s"] for p in parts]
    info = probe(out)
    assert info["duration_s"] == pytest.approx(sum(lengths), abs=1 / 30)
    x = audio_of(out)
    joins = [round(sum(lengths[:k]) * RATE) for k in (1, 2)]
    bounds = [0, *joins, len(x)]
    pieces = [x[a:b] for a, b in zip(bounds, bounds[1:])]
    levels = [measure_pcm(p).integrated_lufs for p in pieces]
    assert max(levels) - min(levels) <= 1.0, levels
    # no click: the largest sample-to-sample jump around each join (AAC frames and priming
    # may move it by up to a frame) is no larger than inside the parts
    inside = max(_max_jump(p[int(0.05 * RATE):-int(0.05 * RATE)]) for p in pieces)
    for j in joins:
        around = x[max(0, j - 2048):j + 2048]
        assert _max_jump(around) <= inside, (j, _max_jump(around), inside)


# ---------------------------------------------------------------- word timings


def test_piper_words_are_estimated_from_its_sentences(kit):
    narration = kit["narration"]
    words = [w for w, _a, _b in narration.words]
    assert words == " ".join(PAGES).split()
    assert narration.words_estimated is True
    starts = [a for _w, a, _b in narration.words]
    assert starts == sorted(starts)
    # each sentence's words lie inside the speech of its page
    for (w, a, b) in narration.words:
        assert any(s - 1e-3 <= a <= b <= e + 1e-3 for s, e in narration.timings), w
    assert split_sentences(PAGES[0]) == ["God told Noah to build an ark.",
                                         "A great flood was coming."]


def test_elevenlabs_words_come_from_the_character_alignment():
    text = "Two by two.\n\nThe end."
    starts = [i * 0.1 for i in range(len(text))]
    ends = [s + 0.08 for s in starts]
    words = words_from_alignment(text, starts, ends, duration_s=5.0)
    assert [w for w, _a, _b in words] == ["Two", "by", "two.", "The", "end."]
    assert words[0] == ("Two", 0.0, pytest.approx(0.28))
    assert words[3][1] == pytest.approx(1.3)


def test_estimated_words_share_their_span_by_length():
    words = estimate_words(["Noah built it."], [(1.0, 2.5)])
    assert [w for w, _a, _b in words] == ["Noah", "built", "it."]
    assert words[0][1] == 1.0 and words[-1][2] <= 2.5
    assert all(a < b for _w, a, b in words)
    assert math.isclose(sum(b - a for _w, a, b in words), 1.5 * 12 / 15, abs_tol=0.01)


def test_normalizing_speech_takes_one_limiter_run_and_lands_on_the_target(kit, monkeypatch):
    """A spoken line is driven over the target through the limiter once and brought down to
    it by a linear gain: one FFmpeg limiter run, the target met, the peaks under the
    ceiling. A signal whose peaks the limiter must hold down much harder (sparse clicks over a
    quiet tone) takes more runs and still lands within the tolerance."""
    from cloops.services.media import audio as snd
    runs = []
    limited = snd._limited
    monkeypatch.setattr(snd, "_limited", lambda *a: runs.append(a) or limited(*a))
    speech = decode(kit["dir"] / "line.mp3")
    out, loud, ceiling = snd.normalize(speech, -14.0, -1.0)
    assert len(runs) == 1
    after = measure_pcm(out)
    assert after.integrated_lufs == pytest.approx(-14.0, abs=0.1)
    assert loud.integrated_lufs == pytest.approx(after.integrated_lufs, abs=0.1)
    assert after.true_peak_dbtp <= ceiling + 0.1
    assert out.shape == speech.shape

    runs.clear()
    t = np.arange(48000 * 4) / 48000
    clicks = np.stack([0.02 * np.sin(2 * np.pi * 330 * t)] * 2, axis=1).astype(np.float32)
    clicks[::4800] = 0.9
    out, loud, ceiling = snd.normalize(clicks, -14.0, -1.0)
    assert 2 <= len(runs) <= 4
    after = measure_pcm(out)
    assert -14.0 - snd.LOUDNESS_TOLERANCE_LU - 0.05 <= after.integrated_lufs <= -13.9
    assert after.true_peak_dbtp <= ceiling + 0.1
