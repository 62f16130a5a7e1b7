"""Conveyor-belt model: a Gaussian over per-pixel features, fitted on belt pixels during calibration.

Colour cameras: the features are the pixel's Lab colour, unless the belt is grey and colour cannot
tell the part from it (calibration tries both, ``calibration.line.choose_belt``). Mono cameras have
no colour to tell belt from part, so the features are brightness and texture: lightness, its
standard deviation over 5x5 px, and lightness smoothed over 9x9 px (``FEATURES``), which keep a dark
part on a black belt in one piece. The light on a line drifts (lamps age, daylight, exposure), and a
model spread over every brightness the belt took during calibration lets the darkest parts of a part
on a dark belt pass for belt: a mono model also keeps the belt's brightness level (``level``, the
mean lightness of the middle half of its border band), and each frame's features are scaled so
that its own band sits at that level before they are compared (``LEVEL_RANGE``).

Light is seldom even across a view (a lamp over the belt's middle, lens vignetting): a belt lit
25 % less at the corners than at the centre is no longer one Gaussian, and its bright middle passes
for part. The model keeps the belt's shading (``shading``): a smooth gain over the view, fitted on
the border band of the calibration frames (``fit_shading``), that each frame is divided by before
its features are compared. A view lit evenly to within ``SHADING_MIN`` keeps no shading.

The neighbourhoods grow the part's silhouette onto the belt by up to ``MONO_EDGE_PX``; the
silhouette takes that off again, or the rectified part would carry a strip of belt (with a
15-px neighbourhood and no such correction, a light belt's strip was plain in every part)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np


FEATURES = ("lab", "mono")
MONO_EDGE_PX = 4  # how far the mono features' neighbourhoods reach past the part's edge
# Fitting the belt: samples beyond this Mahalanobis distance (chi-square, 3 dof: 1 in 2,000 belt
# pixels) are taken for intruding part pixels and dropped, for up to TRIM_ROUNDS refits.
TRIM_DISTANCE = 4.0
TRIM_ROUNDS = 4
# A frame whose belt level is within these factors of the model's is scaled to it; one further off
# is not a drift of the light, and it is compared unscaled.
LEVEL_RANGE = (0.7, 1.4)
# The least variance a feature of the belt model has. The mono features' texture and smoothed
# lightness vary by well under a grey level over a belt: a floor of 1 (the Lab one) doubled their
# spread, and the dark side of a part on a dark belt passed for belt.
VARIANCE_FLOOR = {"lab": 1.0, "mono": 0.05}
# Shading: a view whose fitted light varies by less than this (a fraction, either way) is taken as
# evenly lit and keeps no shading, so that a belt's weave and noise are not fitted as light.
SHADING_MIN = 0.03


@dataclass
class BeltModel:
    mean: np.ndarray      # (3,) in the feature space
    inv_cov: np.ndarray   # (3, 3)
    max_distance: float = 4.0
    features: str = "lab"  # lab (colour cameras) or mono (brightness and texture)
    level: float = 0.0     # mono: the belt lightness each frame is scaled to (_level); 0: no scaling
    shading: tuple[float, ...] = ()  # the light's gain over the view (SHADING_TERMS); (): even light
    # (3, 4) affine map Lab -> whitened space, where the Mahalanobis distance is the Euclidean one:
    # with inv_cov = L L^T, d^T inv_cov d = |L^T (x - mean)|^2. Derived once, used on every frame.
    whiten: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            chol_t = np.linalg.cholesky(np.asarray(self.inv_cov, np.float64)).T
        except np.linalg.LinAlgError:
            raise ValueError("preprocess.belt.inv_cov is not a positive-definite 3x3 matrix; "
                             "re-run calibrate_line to fit the belt model") from None
        self.whiten = np.hstack([chol_t, -(chol_t @ np.asarray(self.mean, np.float64))[:, None]]).astype(np.float32)

    def to_config(self) -> dict:
        return {"mean": [round(float(v), 4) for v in self.mean],
                "inv_cov": [[round(float(v), 6) for v in row] for row in self.inv_cov],
                "max_distance": float(self.max_distance), "features": self.features,
                "level": round(float(self.level), 3), "shading": [round(float(v), 5) for v in self.shading]}

    def needs_colour(self) -> bool:
        """Whether telling this belt from a part takes colour: a colour (Lab) model of a belt that a
        frame without colour would no longer show as belt (its own lightness, no chroma, beyond
        ``max_distance``). A green belt needs colour; a grey one, modelled in Lab, does not."""
        if self.features != "lab":
            return False
        grey = np.array([self.mean[0], 128.0, 128.0], np.float64)  # 8-bit Lab: a = b = 128 is neutral
        d = grey - np.asarray(self.mean, np.float64)
        return float(np.sqrt(d @ np.asarray(self.inv_cov, np.float64) @ d)) > self.max_distance

    @classmethod
    def from_config(cls, belt) -> "BeltModel":
        return cls(np.asarray(belt.mean, np.float32), np.asarray(belt.inv_cov, np.float32), float(belt.max_distance),
                   getattr(belt, "features", "lab"), float(getattr(belt, "level", 0.0)),
                   tuple(float(v) for v in getattr(belt, "shading", ())))

    def even(self, frame: np.ndarray) -> np.ndarray:
        """``frame`` with the belt's shading taken out (the frame itself when the light is even)."""
        return take_out_shading(frame, self.shading)


def _lab(frame_bgr: np.ndarray) -> np.ndarray:
    if frame_bgr.ndim == 2:
        frame_bgr = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2LAB).astype(np.float32)


def _mono(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32: lightness, its standard deviation over 5x5 px, lightness smoothed over 9x9 px."""
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    light = gray.astype(np.float32)
    mean = cv2.blur(light, (5, 5))
    std = cv2.sqrt(cv2.max(cv2.blur(light * light, (5, 5)) - mean * mean, 0.0))
    wide = (2 * MONO_EDGE_PX + 1,) * 2
    return cv2.merge([light, std, cv2.blur(light, wide)])


def features(frame: np.ndarray, kind: str) -> np.ndarray:
    return _mono(frame) if kind == "mono" else _lab(frame)


# The shading's terms, in coordinates u, v running -1..1 across the view: the light's gain is
# 1 + the sum of coefficient * term, a plane and a quadratic bowl, enough for a lamp off to one side
# and for vignetting.
SHADING_TERMS = ("u", "v", "u*u", "v*v", "u*v")


def _terms(u: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
    return [u, v, u * u, v * v, u * v]


def _uv(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return 2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1


@lru_cache(maxsize=8)
def shading_map(h: int, w: int, shading: tuple[float, ...], channels: int = 1) -> np.ndarray:
    """(h, w) float32 (with ``channels`` > 1, (h, w, channels)): the light's gain over a view of that
    size, 1 on average over the border band. Cached: a line's frames are all of one size."""
    u, v = _uv(h, w)
    gain = np.maximum(1.0 + sum(c * t for c, t in zip(shading, _terms(u, v))), 0.05)
    gain = (gain / _band_of(gain[..., None]).mean()).astype(np.float32)
    if channels > 1:
        gain = cv2.merge([gain] * channels)
    gain.flags.writeable = False
    return gain


def take_out_shading(frame: np.ndarray, shading: tuple[float, ...]) -> np.ndarray:
    """A uint8 ``frame`` divided by the light's gain (``shading_map``); the frame itself for ()."""
    if not shading:
        return frame
    gain = shading_map(frame.shape[0], frame.shape[1], tuple(shading), frame.shape[2] if frame.ndim == 3 else 1)
    return cv2.divide(frame, gain, dtype=cv2.CV_8U)


def fit_shading(frames: list[np.ndarray]) -> tuple[float, ...]:
    """The light's shading over the view, from the border band of frames of one size: per band
    pixel, the median lightness over the frames (a part reaching into the band in a few frames is
    left out), and a least-squares fit of it by a constant and ``SHADING_TERMS``. The band spans the
    view's edges and corners, so a bowl or a slope of light over the whole view is fitted from it.
    () when the fitted light varies by less than ``SHADING_MIN`` either way, or the frames differ
    in size."""
    if len(frames) < 1 or len({f.shape[:2] for f in frames}) != 1:
        return ()
    h, w = frames[0].shape[:2]
    grey = [f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    light = np.median(np.stack([_band_of(g[..., None])[:, 0] for g in grey]), axis=0).astype(np.float64)
    u, v = _uv(h, w)
    basis = np.stack([np.ones_like(light)] + [_band_of(t[..., None])[:, 0].astype(np.float64) for t in _terms(u, v)], 1)
    coef = np.linalg.lstsq(basis, light, rcond=None)[0]
    if coef[0] <= 0:
        return ()
    coef = coef[1:] / coef[0]
    gain = shading_map(h, w, tuple(coef))
    return tuple(float(c) for c in coef) if float(np.abs(gain - 1).max()) >= SHADING_MIN else ()


def _band_of(f: np.ndarray) -> np.ndarray:
    """(N, C) values of the border band (6 % of the short side) of an (H, W, C) image."""
    h, w, c = f.shape
    b = max(2, int(0.06 * min(h, w)))
    return np.concatenate([f[:b].reshape(-1, c), f[-b:].reshape(-1, c), f[:, :b].reshape(-1, c),
                           f[:, -b:].reshape(-1, c)])


def _level(f: np.ndarray) -> float:
    """The belt's brightness in mono features ``f`` (H, W, 3): the mean lightness of the middle half
    of its border band (a part reaching into the band, up to a quarter of it, is left out)."""
    light = _band_of(f[..., :1])[:, 0]
    lo, hi = light.size // 4, max(light.size // 4 + 1, 3 * light.size // 4)
    return float(np.partition(light, (lo, hi - 1))[lo:hi].mean())  # no full sort: O(n) per frame


def frame_gain(f: np.ndarray, level: float) -> float:
    """The factor that brings the belt in mono features ``f`` to the model's ``level``; 1.0 without
    a level, or where the frame's belt is not within ``LEVEL_RANGE`` of it (not drift: compared as
    it is)."""
    if level <= 0:
        return 1.0
    seen = _level(f)
    if not LEVEL_RANGE[0] * level <= seen <= LEVEL_RANGE[1] * level:
        return 1.0
    return level / seen


def _gaussian(data: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and inverse covariance; the floor (a variance) keeps a perfectly flat belt invertible."""
    cov = np.cov(data, rowvar=False) + np.eye(3) * floor
    return data.mean(axis=0), np.linalg.inv(cov)


def fit_belt(frames_bgr: list[np.ndarray], samples: np.ndarray | None = None, max_distance: float = 4.0,
             kind: str = "lab") -> BeltModel:
    """Fit on belt pixels. Without explicit ``samples`` the frame border (a 6% band) is taken as belt:
    during calibration parts sit inside the field of view. ``kind``: the features (FEATURES).

    A part near the edge of the view reaches into the band. Its pixels, a percent or two of the
    band, would double the model's spread and let a part of about the belt's brightness pass for
    belt, so samples further than ``TRIM_DISTANCE`` from the fit are dropped and the fit repeated.

    Mono features are fitted on each frame's band scaled to the median of the frames' belt levels,
    as frames are scaled when they are judged (``frame_gain``)."""
    level, shading = 0.0, ()
    if samples is not None:
        data = samples.reshape(-1, 3).astype(np.float64)
    else:
        shading = fit_shading(frames_bgr)
        feats = [features(take_out_shading(f, shading), kind) for f in frames_bgr]
        if kind == "mono":
            level = max(float(np.median([_level(f) for f in feats])), 1e-3)
        data = np.concatenate([_band_of(f).astype(np.float64) * frame_gain(f, level) for f in feats])
    floor = VARIANCE_FLOOR[kind]
    mean, inv_cov = _gaussian(data, floor)
    for _ in range(TRIM_ROUNDS):
        d = data - mean
        keep = np.einsum("ni,ij,nj->n", d, inv_cov, d) < TRIM_DISTANCE**2
        if keep.all() or keep.sum() < 10:
            break
        mean, inv_cov = _gaussian(data[keep], floor)
    return BeltModel(mean.astype(np.float32), inv_cov.astype(np.float32), max_distance, kind, level, shading)


# A pixel whose own lightness lies further than this many of the belt's standard deviations from
# the belt's is unlike the belt by itself (mono features; ``unlike_belt``).
PIXEL_SD = 2.5


def unlike_belt(frame: np.ndarray, model: BeltModel) -> np.ndarray:
    """bool ``(H, W)``: pixels unlike the belt by their own value, not their neighbourhood's. For a
    colour (Lab) model that is where ``belt_mask`` is False; for mono features, whose neighbourhoods
    reach ``MONO_EDGE_PX`` past a part's edge onto the belt, a lightness (shading taken out, brought
    to the belt's level) more than ``PIXEL_SD`` of the belt's standard deviations from its mean."""
    if model.features != "mono":
        return ~belt_mask(frame, model)
    grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    light = model.even(grey).astype(np.float32)
    light *= np.float32(frame_gain(light[..., None], model.level))
    sd = float(np.sqrt(np.linalg.inv(np.asarray(model.inv_cov, np.float64))[0, 0]))
    return np.abs(light - float(model.mean[0])) > PIXEL_SD * sd


def belt_mask(frame_bgr: np.ndarray, model: BeltModel) -> np.ndarray:
    """bool ``(H, W)``: True where the pixel looks like belt (Mahalanobis distance in Lab below
    ``max_distance``)."""
    f = features(model.even(frame_bgr), model.features)
    gain = frame_gain(f, model.level)
    if gain != 1.0:
        f *= np.float32(gain)  # f is this frame's own array
    # Two per-pixel transforms in OpenCV instead of an einsum in numpy: several times faster.
    whitened = cv2.transform(f, model.whiten)
    dist2 = cv2.transform(cv2.multiply(whitened, whitened), np.ones((1, 3), np.float32))  # (H, W)
    return dist2 < model.max_distance**2
