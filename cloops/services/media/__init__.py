"""Vertical video for ads: hook and body clips rendered from comic pages, and their probe.

Layer: **services**.

Modules: :mod:`~cloops.services.media.clips` (render_hook_clip, render_body_clip),
:mod:`~cloops.services.media.panels` (find_panels), :mod:`~cloops.services.media.mp4` (probe),
:mod:`~cloops.services.media.text` (Pillow text), :mod:`~cloops.services.media.captions` (cues, VTT/SRT),
:mod:`~cloops.services.media.layout` (frame, safe area, boxes), :mod:`~cloops.services.media.frames` (camera
moves and compositing), :mod:`~cloops.services.media.ffmpeg` (the encoder, RenderError),
:mod:`~cloops.services.media.audio` (mixing, one loudness, fades, measuring). Nothing here imports the engine: only :mod:`cloops.core.errors` and
:mod:`cloops.core.fileio`.

Licences of what this package runs: the FFmpeg binary comes from the ``imageio-ffmpeg`` wheel
(the wrapper is BSD-2-Clause; the binary is an FFmpeg build with libx264, ``--enable-gpl
--enable-version3``, so GPLv3). cloops runs it as a separate program and does not link it;
anyone who *redistributes* cloops with that wheel passes on a GPLv3 program and its source
offer. Making videos with it puts no licence on the videos. numpy is BSD-3-Clause; Pillow's
built-in font (Aileron) is under the SIL Open Font License.
"""

from .audio import Loudness, Soundtrack, measure_file
from .clips import (BodyClip, BodyPage, CtaClip, HookClip, TextBox, render_body_clip,
                    render_cta_clip, render_hook_clip, write_poster)
from .ffmpeg import RenderError
from .layout import (BUTTON_ZONE_TOP_PX, FPS, FRAME_H_PX, FRAME_W_PX, FULL, PROXY, SAFE_AREA, Box,
                     Raster)
from .mp4 import probe
from .panels import find_panels

__all__ = ["BUTTON_ZONE_TOP_PX", "BodyClip", "BodyPage", "Box", "CtaClip", "FPS", "FRAME_H_PX",
           "FRAME_W_PX", "FULL", "HookClip", "Loudness", "PROXY", "Raster", "RenderError",
           "SAFE_AREA", "Soundtrack", "TextBox", "find_panels", "measure_file", "probe",
           "render_body_clip", "render_cta_clip", "render_hook_clip", "write_poster"]
