"""Vertical clips: every clip is probed (1080x1920, H.264 + AAC, 30 fps, moov before mdat,
the configured duration); text lies inside the safe area; separate mode leaves the clip clean;
same inputs give the same bytes; failures leave nothing at the target and say what to fix.

Images are small synthetic ones drawn with Pillow (and one offline storyboard page); audio is
a tone made by the same FFmpeg. Clips are rendered once per module and shared.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cloops.core.errors import CloopsError, InputError
from cloops.services.media import (FPS, SAFE_AREA, Box, RenderError, find_panels, probe,
                          render_body_clip, render_hook_clip)
from cloops.services.media.captions import Cue, chunk, to_srt, to_vtt
from cloops.services.media.clips import _fit_duration
from cloops.services.media.ffmpeg import ffmpeg_exe
from cloops.services.base import ImageRequest
from cloops.services.storyboard_backend import render_storyboard

PLAIN_RGB = (70, 130, 180)
DIFF_LEVEL = 40  # per-channel difference that is text, not compression noise


# --------------------------------------------------------------------------- helpers

def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def frames_of(path: Path, indices: list[int], size: tuple[int, int] = (1080, 1920)
              ) -> list[np.ndarray]:
    """Decode frames ``indices`` of a clip of ``size`` (width, height) as (height, width, 3)
    uint8 arrays."""
    expr = "+".join(f"eq(n\\,{i})" for i in indices)
    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf", f"select={expr}",
                          "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    w, h = size
    one = w * h * 3
    assert len(out) == one * len(indices)
    return [np.frombuffer(out[k * one:(k + 1) * one], np.uint8).reshape(h, w, 3)
            for k in range(len(indices))]


def diff_box(a: np.ndarray, b: np.ndarray, block: int = 1) -> Box | None:
    """The bounding box of the pixels that differ by more than DIFF_LEVEL, or None.
    ``block`` > 1 compares the means of ``block``x``block`` squares (the box is then in whole
    squares): a decoded frame against an exact one, where H.264's error on a one-pixel edge
    can pass DIFF_LEVEL but a glyph's stroke, several pixels wide, still does not average out."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)
    if block > 1:
        h, w = (diff.shape[0] // block) * block, (diff.shape[1] // block) * block
        signed = (a.astype(np.float32) - b.astype(np.float32))[:h, :w]
        means = signed.reshape(h // block, block, w // block, block, 3).mean(axis=(1, 3))
        mask = np.abs(means).max(axis=2) > DIFF_LEVEL
        if not mask.any():
            return None
        ys, xs = np.nonzero(mask)
        return Box(int(xs.min()) * block, int(ys.min()) * block, (int(xs.max()) + 1) * block,
                   (int(ys.max()) + 1) * block)
    mask = diff > DIFF_LEVEL
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def assert_vertical_clip(path: Path, duration_s: float, size: tuple[int, int] = (1080, 1920)
                         ) -> dict:
    info = probe(path)
    assert (info["width"], info["height"]) == size
    assert info["video_codec"] == "h264" and info["video_profile"] == "High"
    assert info["audio_codec"] == "aac"
    assert info["audio_sample_rate_hz"] == 48000 and info["audio_channels"] == 2
    assert info["fps"] == 30.0
    assert info["color"] == {"primaries": 1, "transfer": 1, "matrix": 1, "range": "tv"}
    assert info["faststart"] is True
    assert info["top_level"].index("moov") < info["top_level"].index("mdat")
    assert info["frames"] == round(duration_s * FPS)
    assert info["video_duration_s"] == pytest.approx(duration_s, abs=1e-6)
    assert info["duration_s"] == pytest.approx(duration_s, abs=0.05)
    assert info["audio_duration_s"] == pytest.approx(duration_s, abs=0.05)
    return info


def no_temp_files(folder: Path) -> bool:
    return not list(folder.glob(".*.tmp"))


# --------------------------------------------------------------------------- inputs

@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    Image.new("RGB", (360, 640), PLAIN_RGB).save(d / "plain.png")
    Image.new("RGB", (480, 360), PLAIN_RGB).save(d / "plain-wide.png")
    grid_page().save(d / "grid.png")
    req = ImageRequest(prompt="x", model="m", params={"size": "2K", "aspect_ratio": "9:16"},
                       annotations={"title": "Noah", "label": "Page 1 of 2",
                                    "narration": "The rain fell for forty days.",
                                    "panels": [{"moment": "Noah looks up"},
                                               {"moment": "Animals board"},
                                               {"moment": "The door closes"}]})
    (d / "storyboard.jpg").write_bytes(render_storyboard(req)[0])
    # the "voice": a 330 Hz tone for 4 s, then 2 s of silence; the "music": 110 Hz, 2 s
    tone(d / "voice.mp3", "0.5*sin(2*PI*330*t)*lt(t\\,4)", 6)
    tone(d / "music.mp3", "0.5*sin(2*PI*110*t)", 2)
    return d


def tone(path: Path, expr: str, seconds: float) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    f"aevalsrc={expr}:s=44100:d={seconds}", "-ac", "1", "-c:a", "libmp3lame",
                    "-b:a", "96k", str(path)], check=True)


GRID = [Box(20, 20, 290, 300), Box(310, 20, 580, 300), Box(20, 320, 580, 560),
        Box(20, 580, 180, 880), Box(200, 580, 580, 880)]


def grid_page() -> Image.Image:
    """A 600x900 page, white gutters, five panels of busy art in three rows."""
    img = Image.new("RGB", (600, 900), "white")
    draw = ImageDraw.Draw(img)
    rng = np.random.default_rng(7)
    for k, box in enumerate(GRID):
        draw.rectangle((box.left, box.top, box.right - 1, box.bottom - 1),
                       fill=(40 + 40 * k, 90, 160 - 20 * k), outline="black", width=3)
        for _ in range(30):  # strokes inside, some touching the panel's border
            x0 = int(rng.integers(box.left, box.right - 10))
            y0 = int(rng.integers(box.top, box.bottom - 10))
            draw.line((x0, y0, x0 + 40, y0 + 25), fill="white", width=2)
    return img


# --------------------------------------------------------------------------- panels

def test_find_panels_in_a_grid_returns_them_in_reading_order(media):
    found = find_panels(media / "grid.png")
    assert found is not None and len(found) == len(GRID)
    for got, want in zip(found, GRID):
        assert all(abs(g - w) <= 3 for g, w in zip(got, want)), (got, want)


def test_find_panels_on_a_storyboard_page_finds_its_three_stacked_panels(media):
    found = find_panels(media / "storyboard.jpg")
    assert found is not None and len(found) == 3
    tops = [b.top for b in found]
    assert tops == sorted(tops)
    for b in found:
        assert b.width > 0.9 * 576 and 0.2 * 1024 < b.height < 0.33 * 1024


def test_find_panels_returns_none_without_gutters(media):
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 255, (400, 300, 3), dtype=np.uint8))
    assert find_panels(noise) is None
    assert find_panels(media / "plain.png") is None
    one = Image.new("RGB", (300, 400), "white")
    ImageDraw.Draw(one).rectangle((20, 20, 280, 380), fill="navy")
    assert find_panels(one) is None  # a splash page: one panel is no sequence


# --------------------------------------------------------------------------- hook

@pytest.fixture(scope="module")
def hooks(media, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("hooks")
    line = "Would you build a boat under a clear blue sky?"
    out = {
        "baked": render_hook_clip(media / "plain.png", d / "baked.mp4", line=line),
        "baked-again": render_hook_clip(media / "plain.png", d / "baked-again.mp4", line=line),
        "clean": render_hook_clip(media / "plain.png", d / "clean.mp4", line="",
                                  duration_s=1.0),
        "baked-short": render_hook_clip(media / "plain.png", d / "baked-short.mp4", line=line,
                                        duration_s=1.0),
        "separate": render_hook_clip(media / "plain.png", d / "hook-1.mp4", line=line,
                                     overlay="separate", duration_s=1.0),
        "panel": render_hook_clip(media / "grid.png", d / "panel.mp4", line="Who closed the door?",
                                  crop_box=GRID[2], duration_s=0.5),
    }
    return out


def test_hook_clips_are_vertical_h264_aac_30fps_faststart(hooks):
    assert_vertical_clip(hooks["baked"].path, 3.0)  # the default
    for name in ("separate", "clean", "baked-short"):
        assert_vertical_clip(hooks[name].path, 1.0)
    assert_vertical_clip(hooks["panel"].path, 0.5)
    assert hooks["baked"].layout == "cover" and hooks["panel"].layout == "fit"
    assert hooks["panel"].region == GRID[2]


def test_hook_baked_text_lies_inside_the_safe_area(hooks):
    assert SAFE_AREA.contains(hooks["baked"].text_box)
    baked = frames_of(hooks["baked-short"].path, [0, 15, 29])
    clean = frames_of(hooks["clean"].path, [0, 15, 29])
    for a, b in zip(baked, clean):
        box = diff_box(a, b)
        assert box is not None, "the line is drawn"
        assert SAFE_AREA.contains(box), box
        assert box.height > 100 and box.width > 300


def test_hook_separate_clip_is_clean_and_the_overlay_png_has_alpha(hooks):
    sep = hooks["separate"]
    # the separate clip holds no text: byte-identical to a render with no line at all
    assert sha(sep.path) == sha(hooks["clean"].path)
    assert sep.overlay_path == sep.path.with_name("hook-1-overlay.png")
    png = Image.open(sep.overlay_path)
    assert png.mode == "RGBA" and png.size == (1080, 1920)
    alpha = np.asarray(png.getchannel("A"))
    assert alpha.min() == 0 and alpha.max() == 255
    ys, xs = np.nonzero(alpha)
    assert SAFE_AREA.contains(Box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    assert sep.text == "Would you build a boat under a clear blue sky?"


def test_hook_render_is_deterministic(hooks):
    assert sha(hooks["baked"].path) == sha(hooks["baked-again"].path)


def test_push_in_window_is_exact_for_every_frame(media):
    """The camera window of every frame is computed from the frame number: it shrinks by the
    same step each frame around a fixed centre (zoompan rounds it to whole pixels)."""
    from cloops.services.media.frames import Shot
    from cloops.services.media.layout import FRAME
    img = Image.open(media / "grid.png").convert("RGB")
    start = Box(100.0, 100.0, 460.0, 740.0)
    shot = Shot(img, start, start.zoomed(1.08), FRAME, 90, backdrop=None, eased=False)
    widths = [shot.window(i).width for i in range(90)]
    steps = np.diff(widths)
    assert (steps < 0).all() and np.allclose(steps, steps[0])
    centres = {tuple(round(c, 6) for c in shot.window(i).center) for i in range(90)}
    assert len(centres) == 1
    assert abs(widths[0] / widths[-1] - 1.08) < 1e-9


def test_hook_moves_on_every_frame(hooks):
    frames = frames_of(hooks["panel"].path, [10, 11, 12])
    for a, b in zip(frames, frames[1:]):
        assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() > 10


def test_frames_are_bt709_limited_range_planes():
    """The reference colours of BT.709 colour bars (ITU-R BT.709-6: limited-range 8-bit
    Y'CbCr), exactly; chroma is the 2x2 average, weighted by alpha for text."""
    from cloops.services.media.frames import Sprite, yuv_planes
    bars = {(255, 255, 255): (235, 128, 128), (0, 0, 0): (16, 128, 128),
            (255, 0, 0): (63, 102, 240), (0, 255, 0): (173, 42, 26),
            (0, 0, 255): (32, 240, 118), (128, 128, 128): (126, 128, 128)}
    for rgb, ycc in bars.items():
        p = yuv_planes(Image.new("RGB", (4, 2), rgb))
        assert (p.y.size, p.u.size, p.v.size) == ((4, 2), (2, 1), (2, 1))
        got = (p.y.getpixel((3, 1)), p.u.getpixel((1, 0)), p.v.getpixel((1, 0)))
        assert got == ycc, (rgb, got)
    # a red glyph pixel beside transparency keeps its chroma; the sprite lands on even pixels
    rgba = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    sprite = Sprite.of(rgba, Box(5, 7, 8, 10))
    assert sprite.box == Box(4, 6, 8, 10)
    assert sprite.planes.v.getpixel((1, 1)) == 240 and sprite.masks[1].getpixel((1, 1)) == 64


def test_strip_conversions_give_the_bytes_of_whole_image_ones():
    """RGB->YUV and the poster's YUV->RGB work in strips of rows (issue 24: memory); every
    size - odd heights and widths, a strip's edge inside the image - gives the bytes a
    whole-image conversion gives, and the poster's inverse brings the planes back within
    the rounding of 8-bit limited range."""
    from cloops.services.media import frames as fr
    from cloops.services.media.layout import FRAME_H_PX, FRAME_W_PX
    rng = np.random.default_rng(7)
    for h, w in ((fr.STRIP_ROWS * 2 + 1, 577), (fr.STRIP_ROWS - 1, 130), (3, 5), (1, 1)):
        rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        y, u, v = fr._ycc(rgb)  # the whole image at once, as before the strips
        want = [np.clip(a, 0, 255).astype(np.uint8) for a in (y, fr._halve(u), fr._halve(v))]
        got = fr.yuv_planes(Image.fromarray(rgb))
        for plane, ref in zip((got.y, got.u, got.v), want):
            assert np.array_equal(np.asarray(plane), ref), (h, w)
    flat = rng.integers(40, 200, size=(1, 1, 3), dtype=np.uint8)
    img = Image.fromarray(np.broadcast_to(flat, (FRAME_H_PX, FRAME_W_PX, 3)).copy())
    planes = fr.yuv_planes(img)
    frame = planes.y.tobytes() + planes.u.tobytes() + planes.v.tobytes()
    back = np.asarray(fr.frame_to_rgb(frame)).astype(int)
    assert np.abs(back - flat.astype(int)).max() <= 2
    assert (back == back[0, 0]).all()  # no seam at the strips' edges


def test_a_shot_dropped_after_its_last_frame_makes_the_same_frames_again(media):
    """A shot's planes go after its last frame and come back when a frame needs them
    again (a poster, a second rendition): the same bytes."""
    from cloops.services.media.frames import Compositor, Shot
    from cloops.services.media.layout import FRAME_H_PX, FRAME_W_PX
    img = Image.open(media / "grid.png").convert("RGB")
    box = Box(0, 0, img.width, img.height)
    shot = Shot(img, box, box.zoomed(1.1), Box(0, 0, FRAME_W_PX, FRAME_H_PX), 4, backdrop=None,
                eased=False)
    comp = Compositor([(shot, i) for i in range(4)], [()] * 4)
    first = [b"".join(bytes(b) for b in comp.frame(i)) for i in range(4)]
    assert shot._planes is None  # released after frame 3
    again = b"".join(bytes(b) for b in comp.frame(1))
    assert again == first[1] and first[1] != first[2]


def test_clips_keep_the_source_colours(media, tmp_path):
    """What a player shows is the image's colour: the frames are tagged as what they are."""
    clip = render_hook_clip(media / "plain.png", tmp_path / "c.mp4", line="", duration_s=0.2)
    frame = frames_of(clip.path, [3])[0]
    assert np.abs(frame[200:1700, 100:1000].astype(int) - PLAIN_RGB).max() <= 3


def test_hook_errors_name_the_file_and_the_fix(media, tmp_path):
    with pytest.raises(InputError, match="missing.png.*Fix:"):
        render_hook_clip(tmp_path / "missing.png", tmp_path / "h.mp4", line="x")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="bad.jpg.*not a readable image.*Fix:"):
        render_hook_clip(bad, tmp_path / "h.mp4", line="x")
    with pytest.raises(InputError, match="crop_box"):
        render_hook_clip(media / "plain.png", tmp_path / "h.mp4", line="x",
                         crop_box=(0, 0, 5000, 10))
    with pytest.raises(InputError, match="overlay"):
        render_hook_clip(media / "plain.png", tmp_path / "h.mp4", line="x", overlay="burned")
    with pytest.raises(InputError, match="duration_s"):
        render_hook_clip(media / "plain.png", tmp_path / "h.mp4", line="x", duration_s=0)
    assert not (tmp_path / "h.mp4").exists() and no_temp_files(tmp_path)


def test_missing_ffmpeg_is_a_clear_error_and_leaves_no_file(media, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-ffmpeg"))
    target = tmp_path / "h.mp4"
    with pytest.raises(RenderError, match="no-ffmpeg.*Fix:.*IMAGEIO_FFMPEG_EXE") as err:
        render_hook_clip(media / "plain.png", target, line="x")
    assert isinstance(err.value, CloopsError)
    assert not target.exists() and no_temp_files(tmp_path)


def test_failed_encode_keeps_the_old_file_and_leaves_no_temp(media, tmp_path):
    broken = tmp_path / "voice.mp3"
    broken.write_bytes(b"ID3" + b"\x00" * 64 + b"garbage" * 100)
    target = tmp_path / "body.mp4"
    target.write_bytes(b"previous render")
    with pytest.raises(RenderError, match=r"voice.mp3: FFmpeg failed to decode its audio.*Fix:"):
        render_body_clip([{"image_path": media / "plain.png", "narration": "Hi.",
                           "start_s": 0.0, "end_s": 1.0}], target, voice_mp3=broken,
                         min_s=1, max_s=5)
    assert target.read_bytes() == b"previous render"
    assert no_temp_files(tmp_path)


# --------------------------------------------------------------------------- body

NARRATION = ["God told Noah to build an ark. A great flood was coming, and Noah listened.",
             "The animals came two by two, from the smallest mouse to the tallest giraffe."]


@pytest.fixture(scope="module")
def bodies(media, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bodies")
    timed = [{"image_path": media / "grid.png", "narration": NARRATION[0],
              "start_s": 0.2, "end_s": 1.6},
             {"image_path": media / "plain.png", "narration": NARRATION[1],
              "start_s": 1.8, "end_s": 2.6}]
    silent = [dict(p, narration="") for p in timed]
    kw = dict(voice_mp3=media / "voice.mp3", min_s=3, max_s=20)
    return {
        "baked": render_body_clip(timed, d / "baked.mp4", **kw),
        "baked-again": render_body_clip(timed, d / "baked-again.mp4", **kw),
        "separate": render_body_clip(timed, d / "separate" / "body.mp4", overlay="separate",
                                     **kw),
        "silent": render_body_clip(silent, d / "silent.mp4", **kw),
        # the voice tone stops at 4 s: this clip is held to 5.5 s to hear the music alone
        "music": render_body_clip(timed, d / "music.mp4", music_path=media / "music.mp3",
                                  **dict(kw, min_s=5.5)),
        "reading": render_body_clip([{"image_path": media / "storyboard.jpg",
                                      "narration": "Noah looked up at the sky."}],
                                    d / "reading.mp4", min_s=2, max_s=30),
        "cut": render_body_clip([{"image_path": media / "plain-wide.png",
                                  "narration": " ".join(NARRATION)}], d / "cut.mp4",
                                min_s=1, max_s=1.5),
    }


def test_body_clips_are_vertical_h264_aac_30fps_faststart(bodies):
    # voice-timed: the last page stays 0.8 s after the voice ends at 2.6 s
    assert bodies["music"].duration_s == 5.5 and "held the last page" in bodies["music"].policy
    assert_vertical_clip(bodies["music"].path, 5.5)
    for name in ("baked", "separate", "silent"):
        assert bodies[name].duration_s == pytest.approx(3.4)
        assert_vertical_clip(bodies[name].path, 3.4)
    assert bodies["baked"].timing == "voice"
    assert_vertical_clip(bodies["reading"].path, bodies["reading"].duration_s)
    assert_vertical_clip(bodies["cut"].path, 1.5)


def test_body_shows_found_panels_or_pans(bodies):
    panels = bodies["baked"].panels
    assert panels[0] is not None and len(panels[0]) == len(GRID)
    assert panels[1] is None  # the plain page has no panels: it is panned
    assert bodies["reading"].panels[0] is not None and len(bodies["reading"].panels[0]) == 3


def test_body_baked_captions_lie_inside_the_safe_area(bodies):
    cues = bodies["baked"].cues
    assert len(cues) >= 2
    assert cues[0].start_s == pytest.approx(0.2) and cues[-1].end_s == pytest.approx(2.6)
    picks = [round((c.start_s + c.end_s) / 2 * FPS) for c in cues]
    baked = frames_of(bodies["baked"].path, picks)
    clean = frames_of(bodies["silent"].path, picks)
    for a, b in zip(baked, clean):
        box = diff_box(a, b)
        assert box is not None and SAFE_AREA.contains(box), box


def test_body_separate_mode_writes_captions_and_a_clean_clip(bodies):
    sep = bodies["separate"]
    assert sha(sep.path) == sha(bodies["silent"].path)  # no caption pixels in the clip
    assert sep.vtt_path == sep.path.with_suffix(".vtt") and sep.srt_path.name == "body.srt"
    vtt = sep.vtt_path.read_text()
    srt = sep.srt_path.read_text()
    assert vtt.startswith("WEBVTT\n\n1\n00:00:00.200 --> ")
    assert "\n1\n00:00:00,200 --> " in "\n" + srt
    words = " ".join(" ".join(NARRATION).split())
    assert " ".join(" ".join(c.lines) for c in sep.cues) == words
    assert sep.cues == bodies["baked"].cues


def test_body_render_is_deterministic(bodies):
    assert sha(bodies["baked"].path) == sha(bodies["baked-again"].path)


def test_body_music_bed_is_ducked_under_the_voice(bodies):
    """The music (110 Hz) is much quieter while the voice (330 Hz) sounds than after it."""
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(bodies["music"].path),
                          "-f", "s16le", "-ac", "1", "-ar", "48000", "-"],
                         capture_output=True, check=True).stdout
    x = np.frombuffer(raw, np.int16).astype(np.float64) / 32768

    def level(hz: float, start_s: float) -> float:
        seg = x[int(start_s * 48000):int(start_s * 48000) + 48000 // 2]
        spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        return float(spectrum[int(hz * len(seg) / 48000)])

    under_voice, alone = level(110, 1.5), level(110, 4.6)
    # the bed is as loud as the voice alone and 12 dB (x 0.25) under it while it speaks
    # (music_duck_db's default; K-weighting makes a 110 Hz tone need a little more amplitude
    # than a 330 Hz one to be as loud)
    assert level(330, 1.5) > 3 * under_voice  # the voice is on top
    assert alone > 0 and under_voice < 0.35 * alone  # ducked by more than 9 dB


def test_body_reading_pace_and_cut_policies(bodies):
    reading = bodies["reading"]
    assert reading.timing == "reading"
    # 6 words at 160 wpm + 0.8 s = 3.05 s, below 3 panels x 1.2 s: the panels' minimum wins
    assert reading.duration_s == pytest.approx(3.6)
    cut = bodies["cut"]
    assert cut.duration_s == 1.5 and "cut in page 1" in cut.policy and "fade" in cut.policy
    assert cut.natural_duration_s > 1.5


def test_duration_policy():
    shown = [(0.0, 4.0), (4.0, 9.0)]
    # voice too short: hold the last page
    d, n, policy, s, _, fade = _fit_duration("voice", shown, [(0.2, 3.5), (4.0, 8.2)], 15, 60)
    assert (d, n, fade) == (15, 2, False) and s[-1] == (4.0, 15) and "held" in policy
    # reading too short: slow down evenly
    d, n, policy, s, _, _ = _fit_duration("reading", shown, shown, 18, 60)
    assert d == 18 and s == [(0.0, 8.0), (8.0, 18.0)] and "slowed" in policy
    # too long: end after the last whole page within range
    long = [(0.0, 20.0), (20.0, 50.0), (50.0, 80.0)]
    d, n, policy, s, spoken, fade = _fit_duration("reading", long, long, 15, 60)
    assert (d, n, fade) == (50.0, 2, False) and "ended after page 2 of 3" in policy
    # voice: the page ends 0.8 s after its voice
    d, n, *_ = _fit_duration("voice", long, [(0, 19), (20, 49), (50, 79)], 15, 60)
    assert (d, n) == (49.8, 2)
    # no page ends within range: cut with a fade
    d, n, policy, s, _, fade = _fit_duration("reading", [(0.0, 90.0)], [(0.0, 90.0)], 15, 60)
    assert (d, n, fade) == (60, 1, True) and "fade" in policy


def test_body_input_errors(media, tmp_path):
    with pytest.raises(InputError, match="at least one page"):
        render_body_clip([], tmp_path / "b.mp4")
    with pytest.raises(InputError, match="start_s/end_s"):
        render_body_clip([{"image_path": media / "plain.png", "start_s": 0, "end_s": 1},
                          {"image_path": media / "plain.png"}], tmp_path / "b.mp4")
    with pytest.raises(InputError, match="voice_mp3"):
        render_body_clip([{"image_path": media / "plain.png"}], tmp_path / "b.mp4",
                         voice_mp3=tmp_path / "none.mp3")
    with pytest.raises(InputError, match="min_s"):
        render_body_clip([{"image_path": media / "plain.png"}], tmp_path / "b.mp4",
                         min_s=30, max_s=10)
    assert not (tmp_path / "b.mp4").exists()


# --------------------------------------------------------------------------- probe, captions

def test_probe_tells_a_file_without_faststart(media, tmp_path):
    plain = tmp_path / "slow.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "color=c=red:s=64x64:r=25:d=1", "-c:v", "libx264", str(plain)], check=True)
    info = probe(plain)
    assert info["faststart"] is False and info["fps"] == 25.0 and info["frames"] == 25
    assert info["codecs"] == ["h264"] and "audio_codec" not in info
    with pytest.raises(InputError, match="not an MP4"):
        probe(media / "plain.png")


def test_captions_formats_and_chunking():
    cues = [Cue(0.0, 1.5, ("Hello & <you>",)), Cue(1.5, 3725.25, ("two", "lines"))]
    assert to_vtt(cues) == ("WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.500\nHello &amp; &lt;you&gt;"
                            "\n\n2\n00:00:01.500 --> 01:02:05.250\ntwo\nlines\n")
    assert to_srt(cues) == ("1\n00:00:00,000 --> 00:00:01,500\nHello & <you>\n\n"
                            "2\n00:00:01,500 --> 01:02:05,250\ntwo\nlines\n")
    pieces = chunk("One. Two words here. " + "word " * 12, lambda s: len(s) <= 30)
    assert all(len(p) <= 30 for p in pieces)
    assert " ".join(pieces).split() == ("One. Two words here. " + "word " * 12).split()
    assert pieces[0] == "One. Two words here."


def test_a_text_blended_into_a_moving_band_gives_pillows_paste_bytes():
    """The band under a moving picture is composed as arrays (issue 24): a text blended there,
    clipped at the band's edges, gives exactly the bytes Pillow's paste gives on planes."""
    from cloops.services.media.frames import Sprite, yuv_planes
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (37, 51, 4), dtype=np.uint8), "RGBA")
    sprite = Sprite.of(rgba, Box(7, 9, 58, 46))
    planes = yuv_planes(Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)))
    for top, bottom in ((0, 60), (20, 40), (30, 60)):  # whole, cutting through, lower edge
        ref = planes.rows(top, bottom)
        band = tuple(np.asarray(p).copy() for p in ref.y_u_v())
        sprite.onto(ref, top)
        sprite.blend(band, top)
        for want, got in zip(ref.y_u_v(), band):
            assert np.array_equal(np.asarray(want), got), (top, bottom)


def test_warp_maps_pixel_centres_onto_pixel_centres():
    """A window shifted by whole pixels at 1:1 is exactly a crop; a half-pixel shift is the
    mean of neighbours (bilinear)."""
    from cloops.services.media.frames import warp
    rng = np.random.default_rng(5)
    plane = rng.integers(0, 256, (90, 70), dtype=np.uint8)
    assert np.array_equal(warp(plane, (3.0, 5.0, 53.0, 65.0), (50, 60)), plane[5:65, 3:53])
    half = warp(plane, (3.5, 5.0, 53.5, 65.0), (50, 60)).astype(int)
    mean = (plane[5:65, 3:53].astype(int) + plane[5:65, 4:54]) / 2
    assert np.abs(half - mean).max() <= 1
