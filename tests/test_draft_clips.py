"""Draft clips: a clip whose pictures are offline drafts is drawn as a 540x960 proxy
(``ads.drafts: proxy``, the default) - the same layout, text, timing and sound as the
1080x1920 clip, a quarter of the pixels - and a clip of real pictures, or of pictures replaced
by hand, always in full. ``ads.drafts`` is a dependency of a clip only while its pictures come
from an offline backend: switching it re-renders the draft clips and nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cloops.services.media import (FULL, PROXY, BodyPage, Box, probe, render_body_clip,
                                   render_cta_clip, render_hook_clip)
from cloops.services.media.frames import Compositor, Shot

from conftest import make_project
from test_ads import CTA_TASKS, HOOK_TASKS, KIDS, by_id, manifest
from test_media import assert_vertical_clip, frames_of, grid_page, sha
from test_rebuild_rules import FAKE
from test_step_kinds import ran

LINE = "Would you build a boat on dry land?"
CLIP_TASKS = HOOK_TASKS | CTA_TASKS | {"body-clip"}


def halved(frame: np.ndarray) -> np.ndarray:
    """A decoded full frame averaged 2x2: what the proxy should show."""
    h, w = frame.shape[0] // 2, frame.shape[1] // 2
    return frame.astype(np.float32).reshape(h, 2, w, 2, 3).mean(axis=(1, 3))


def compare(proxy: np.ndarray, full: np.ndarray, block: int = 8
            ) -> tuple[float, tuple[int, int], float]:
    """How a proxy frame matches the full frame halved: ``(mean, offset, worst)`` - the mean
    absolute difference, the shift (dy, dx) of at most one pixel that matches best (``(0, 0)``
    when nothing is drawn off its place: a shift of one proxy pixel raises the mean by half
    again), and the largest difference of a ``block``x``block`` square's mean (a text or a
    picture left out shows there; glyph edges a sub-pixel apart do not reach it)."""
    want = halved(full)
    got = proxy.astype(np.float32)
    inner = got[4:-4, 4:-4]
    errors = {(dy, dx): float(np.abs(inner - want[4 + dy:want.shape[0] - 4 + dy,
                                                  4 + dx:want.shape[1] - 4 + dx]).mean())
              for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    diff = got - want
    h, w = (diff.shape[0] // block) * block, (diff.shape[1] // block) * block
    means = diff[:h, :w].reshape(h // block, block, w // block, block, 3).mean(axis=(1, 3))
    return errors[(0, 0)], min(errors, key=errors.get), float(np.abs(means).max())


def assert_halved(proxy: np.ndarray, full: np.ndarray, what: str, *, rounded: bool = False
                  ) -> None:
    """``proxy`` is ``full`` halved, nothing off its place - but with ``rounded``, a picture
    whose stage edge falls on an odd proxy row (the body's, at full row 190) sits one row
    off: stages are drawn on even pixels, where the chroma rows pair up."""
    mean, offset, worst = compare(proxy, full)
    places = {(0, 0), (-1, 0), (1, 0)} if rounded else {(0, 0)}
    assert mean < 3.0 and offset in places and worst < 48.0, (what, mean, offset, worst)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("proxy")
    grid_page().save(d / "page.png")
    cover = Image.new("RGB", (800, 1200), (40, 90, 150))
    cover.paste(grid_page().resize((400, 600)), (200, 300))
    cover.save(d / "cover.jpg", quality=92)
    return d


def test_a_proxy_is_the_full_clip_drawn_at_half_size(pictures):
    d = pictures
    made = {}
    for raster in (FULL, PROXY):
        tag = raster.label
        made[tag] = (
            render_hook_clip(d / "page.png", d / f"hook-{tag}.mp4", line=LINE, duration_s=1.0,
                             crop_box=(20, 20, 580, 300), overlay="both",
                             poster_path=d / f"hook-{tag}.jpg", raster=raster),
            render_body_clip([BodyPage(d / "page.png", "God told Noah to build an ark.")],
                             d / f"body-{tag}.mp4", min_s=2, max_s=3,
                             poster_path=d / f"body-{tag}.jpg", raster=raster),
            render_cta_clip(d / "cover.jpg", d / f"cta-{tag}.mp4", title="Noah's Ark",
                            line="Read it now", duration_s=1.0, overlay="separate",
                            poster_path=d / f"cta-{tag}.jpg", raster=raster))
    body = made[PROXY.label][1]
    for full, proxy in zip(made[FULL.label], made[PROXY.label]):
        assert full.raster == FULL and proxy.raster == PROXY
        assert proxy.frames == full.frames and proxy.duration_s == full.duration_s
        # the layout is the full frame's: the same text boxes, the same overlay PNG
        assert proxy.text_boxes == full.text_boxes
        if full.overlay_path is not None:
            assert sha(proxy.overlay_path) == sha(full.overlay_path)
            assert Image.open(proxy.overlay_path).size == (1080, 1920)
        assert_vertical_clip(proxy.path, proxy.duration_s, (540, 960))
        assert Image.open(proxy.poster_path).size == (540, 960)
        assert Image.open(full.poster_path).size == (1080, 1920)
        last = full.frames - 1
        for got, want in zip(frames_of(proxy.path, [0, last], (540, 960)),
                             frames_of(full.path, [0, last])):
            assert_halved(got, want, proxy.path.name, rounded=proxy is body)
        # the poster (a CTA's with its overlay laid over it) is the full one, halved
        assert_halved(np.asarray(Image.open(proxy.poster_path)),
                      np.asarray(Image.open(full.poster_path)), proxy.poster_path.name,
                      rounded=proxy is body)
    # a proxy is as deterministic as a full clip
    again = render_hook_clip(d / "page.png", d / "hook-again.mp4", line=LINE, duration_s=1.0,
                             crop_box=(20, 20, 580, 300), raster=PROXY)
    assert sha(again.path) == sha(made[PROXY.label][0].path)


def test_a_compositor_refuses_shots_made_for_another_raster():
    img = grid_page()
    box = Box(0, 0, 600, 900)
    shot = Shot(img, box, box.zoomed(1.05), Box(0, 0, 1080, 1920), 2, backdrop=None,
                eased=False, raster=FULL)
    assert shot.dest == Box(0, 0, 1080, 1920)
    assert Shot(img, box, box, Box(0, 190, 1080, 950), 2, backdrop=None, eased=False,
                raster=PROXY).dest == Box(0, 96, 540, 476)  # halved, on even pixels
    with pytest.raises(ValueError, match="another raster"):
        Compositor([(shot, 0), (shot, 1)], [(), ()], PROXY)


# ---------------------------------------------------------------- through doit


def clips(sdir) -> dict[str, dict]:
    return {cid: c for cid, c in by_id(manifest(sdir)).items()
            if c["type"] in ("hook", "body", "cta")}


@pytest.fixture(scope="module")
def drafts(tmp_path_factory):
    """The kids story built offline with short clips (1 s hooks and CTAs, a 2-4 s body)."""
    project = make_project(tmp_path_factory.mktemp("drafts"), ["noah-s-ark"], templates=(KIDS,),
                           ads=True)
    project.edit_config(lambda c: c["ads"].update(hookDurationS=1, ctaDurationS=1, minS=2,
                                                  maxS=4), KIDS)
    first = project.doit("build:noah-s-ark")
    assert first.rc == 0, first.out + first.err
    # the run says so before it renders anything
    assert "Ad clips of draft pictures are 540x960 proxies" in first.out, first.out
    return project, project.story_dir("noah-s-ark", KIDS)


def test_offline_drafts_are_proxies_and_ads_drafts_rebuilds_exactly_the_clips(drafts):
    project, sdir = drafts
    made = clips(sdir)  # the manifest validates against the schema: proxies are 540x960
    assert set(made) == {"hook-1", "hook-2", "hook-3", "body", "cta-1", "cta-2"}
    for cid, c in made.items():
        assert c["proxy"] is True and (c["width"], c["height"], c["fps"]) == (540, 960, 30.0), cid
        assert_vertical_clip(sdir / c["file"], round(c["durationS"] * 30) / 30, (540, 960))
        assert Image.open(sdir / c["poster"]).size == (540, 960)
        assert abs(c["loudness"]["integratedLufs"] + 14) <= 1.0, cid  # the same sound
    before = {cid: sha(sdir / c["file"]) for cid, c in made.items()}

    project.edit_config(lambda c: c["ads"].update(drafts="full"), KIDS)
    full = project.doit("build:noah-s-ark")
    assert full.rc == 0, full.out + full.err
    assert ran(full.out) == CLIP_TASKS | {"ad-manifest"}, full.out
    assert "ads.drafts (offline pictures)" in full.out  # the reason each clip ran
    for cid, c in clips(sdir).items():
        assert c["proxy"] is False and (c["width"], c["height"]) == (1080, 1920), cid
        assert_vertical_clip(sdir / c["file"], round(c["durationS"] * 30) / 30)
        # the same timing: a proxy's length is its full clip's
        assert c["durationS"] == made[cid]["durationS"], cid

    project.edit_config(lambda c: c["ads"].update(drafts="proxy"), KIDS)
    back = project.doit("build:noah-s-ark")
    assert back.rc == 0, back.out + back.err
    assert ran(back.out) == CLIP_TASKS | {"ad-manifest"}, back.out
    assert {cid: sha(sdir / c["file"]) for cid, c in clips(sdir).items()} == before
    assert ran(project.doit("build:noah-s-ark").out) == set()


def test_a_picture_replaced_by_hand_is_no_draft_its_clip_is_full(drafts):
    project, sdir = drafts
    hooks = json.loads((sdir / "ads" / "hooks.json").read_text())["hooks"]
    page = hooks[0]["page"]
    on_page = {f"hook-clip {k + 1}" for k, h in enumerate(hooks) if h["page"] == page}
    image = sdir / "images" / f"{page}.jpg"
    with Image.open(image) as old:
        size = old.size
    grid_page().resize(size).save(image, quality=90)  # the user's own picture
    run = project.doit("build:noah-s-ark")
    assert run.rc == 0, run.out + run.err
    assert on_page | {"body-clip", "ad-manifest"} <= ran(run.out), run.out
    made = clips(sdir)
    for k, h in enumerate(hooks):
        c = made[f"hook-{k + 1}"]
        want = (1080, 1920) if h["page"] == page else (540, 960)
        assert (c["width"], c["height"]) == want and c["proxy"] is (want == (540, 960))
    # the body shows the other pages too, still drafts: it stays a proxy
    assert made["body"]["proxy"] is True and probe(sdir / "ads" / "body.mp4")["width"] == 540


def test_clips_of_real_pictures_are_full_and_ads_drafts_is_no_dependency(tmp_path):
    project = make_project(tmp_path, ["noah-s-ark"], templates=(KIDS,), ads=True)
    project.edit_config(lambda c: c["ads"].update(hookDurationS=1, ctaDurationS=1, minS=2,
                                                  maxS=4), KIDS)
    first = project.doit("build:noah-s-ark", env=FAKE)
    assert first.rc == 0, first.out + first.err
    assert "540x960 proxies" not in first.out
    sdir = project.story_dir("noah-s-ark", KIDS)
    for cid, c in clips(sdir).items():
        assert c["proxy"] is False and (c["width"], c["height"]) == (1080, 1920), cid
    project.edit_config(lambda c: c["ads"].update(drafts="full"), KIDS)
    again = project.doit("build:noah-s-ark", env=FAKE)
    assert again.rc == 0, again.out + again.err
    assert ran(again.out) == set(), again.out
