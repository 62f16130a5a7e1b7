"""Which kind of camera a frame came from: mono (one channel, or three identical ones, as decoders
and most drivers hand a mono sensor's image) or colour; and whether a frame fits the line it reaches.

A frame's channel spread is the 99.5th percentile, over sampled pixels, of the largest difference
between its channels. A mono sensor's copies give 0 however they were compressed. A colour sensor
parts the channels by noise and demosaicing, but on a grey scene only a little, and JPEG takes
much of it: a simulated colour camera (sensor noise 1-3 grey levels) on a grey belt measured 4-13
uncompressed, 2-3 at JPEG quality 95 and 0 at 75. One cut between the kinds therefore splits some
colour cameras' frames at random (sensor noise 1.8, quality 95: 12 of 26 frames on one side, 14 on
the other). So a frame is refused only when it lacks what its line needs or is clearly of the
other kind (:func:`kind_mismatch`).
"""
from __future__ import annotations

import numpy as np

MONO_MAX_CHANNEL_DIFF = 1     # at or below: identical channels up to rounding
COLOUR_MIN_CHANNEL_DIFF = 6   # at or above: visible colour, not a grey scene's noise
SAMPLE_STEP = 8


def channel_spread(frame: np.ndarray) -> float:
    """How far apart a frame's channels are (0 for one channel or identical channels)."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return 0.0
    s = frame[::SAMPLE_STEP, ::SAMPLE_STEP].astype(np.int16)
    diff = np.maximum(np.abs(s[..., 0] - s[..., 1]), np.abs(s[..., 1] - s[..., 2]))
    return float(np.percentile(diff, 99.5))


def frame_kind(frame: np.ndarray) -> str:
    """'mono' or 'colour' (uint8 (H, W) or (H, W, 3)): mono when the channels are identical."""
    return "mono" if channel_spread(frame) <= MONO_MAX_CHANNEL_DIFF else "colour"


def kind_mismatch(frame: np.ndarray, camera: str, needs_colour: bool) -> str | None:
    """Why ``frame`` does not fit a line calibrated on ``camera`` frames, or None when it does.

    - A line that tells parts from the belt by colour (``needs_colour``: a coloured belt, see
      ``BeltModel.needs_colour``) refuses a frame without colour: it could not find the part, and
      an empty belt would look like one.
    - A mono line refuses a frame with visible colour: another camera than the one calibrated.
    - Otherwise the frame fits: a colour camera's line that uses brightness and texture reads a
      grey scene the same whether compression left it a trace of colour or none."""
    spread = channel_spread(frame)
    if needs_colour and spread <= MONO_MAX_CHANNEL_DIFF:
        kind = "mono"
    elif camera == "mono" and spread >= COLOUR_MIN_CHANNEL_DIFF:
        kind = "colour"
    else:
        return None
    return (f"a {kind} frame, but this line was calibrated on {camera} frames (preprocess.camera); calibrate "
            "it again on frames from this camera (commission_line or calibrate_line)")
