"""Which kind of camera a frame came from: mono (one channel, or three identical ones, as decoders
and most drivers hand a mono sensor's image) or colour."""
from __future__ import annotations

import numpy as np

# A frame is mono when 99.5 % of its sampled pixels differ by at most this between channels: a colour
# sensor's demosaicing and noise part the channels even on a grey scene, a mono image's copies never.
MONO_MAX_CHANNEL_DIFF = 2
SAMPLE_STEP = 8


def frame_kind(frame: np.ndarray) -> str:
    """'mono' or 'colour' (uint8 (H, W) or (H, W, 3))."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return "mono"
    s = frame[::SAMPLE_STEP, ::SAMPLE_STEP].astype(np.int16)
    diff = np.maximum(np.abs(s[..., 0] - s[..., 1]), np.abs(s[..., 1] - s[..., 2]))
    return "mono" if np.percentile(diff, 99.5) <= MONO_MAX_CHANNEL_DIFF else "colour"
