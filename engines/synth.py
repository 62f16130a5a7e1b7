"""Synthetic defects for training on OK images only.

Every generator has the signature ``gen(image, rng, strength, **context) -> (image, mask)``:
``image`` is float32 ``(H, W)`` or ``(H, W, C)`` in [0, 1] and is not modified in place;
``mask`` is float32 ``(H, W)`` in {0, 1}, exactly the pixels the generator changed by a visible
amount (``uneven_finish``, a texture change, labels its whole region instead; see there). ``strength`` in [0, 1] scales contrast from faint (0) to strong (1), which lets training
run a curriculum from strong to faint defects. Position, size, shape and polarity are random.
"""
from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

Generator = Callable[..., tuple[np.ndarray, np.ndarray]]

# A pixel belongs to a defect's mask when the generator changed it by more than this (of full scale).
# Below about 5 grey levels a change vanishes in this kind of texture; labelling it defect would
# teach the model to fire on invisible tails of gradients and blends.
CHANGE_EPS = 5.0 / 255.0


def _as_hwc(image: np.ndarray) -> np.ndarray:
    return image[..., None] if image.ndim == 2 else image


def _like(result_hwc: np.ndarray, original: np.ndarray) -> np.ndarray:
    out = result_hwc[..., 0] if original.ndim == 2 else result_hwc
    return out.astype(np.float32, copy=False)


def _contrast(rng: np.random.Generator, strength: float) -> float:
    """Amplitude of an intensity change: faint ~0.04, strong ~0.45 of full scale."""
    lo = 0.04 + 0.20 * strength
    hi = 0.12 + 0.33 * strength
    return float(rng.uniform(lo, hi))


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    diff = np.abs(_as_hwc(after) - _as_hwc(before)).max(axis=2)
    return (diff > CHANGE_EPS).astype(np.float32)


def _bezier(points: np.ndarray, samples: int = 64) -> np.ndarray:
    """Points on the Bezier curve with the given control points (De Casteljau, vectorised)."""
    t = np.linspace(0.0, 1.0, samples)[:, None, None]
    pts = np.broadcast_to(points[None], (samples, *points.shape)).copy()
    while pts.shape[1] > 1:
        pts = (1 - t) * pts[:, :-1] + t * pts[:, 1:]
    return pts[:, 0]


def _closed_bezier_polygon(rng: np.random.Generator, center: np.ndarray, radius: float) -> np.ndarray:
    """A smooth closed blob: piecewise cubic Bezier through jittered points on a circle."""
    n = int(rng.integers(4, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.45, 1.0, n)
    anchors = center + np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)
    pieces = []
    for i in range(n):
        a, b = anchors[i], anchors[(i + 1) % n]
        prev, nxt = anchors[i - 1], anchors[(i + 2) % n]
        c1 = a + (b - prev) / 6.0
        c2 = b - (nxt - a) / 6.0
        pieces.append(_bezier(np.stack([a, c1, c2, b]), 16)[:-1])
    return np.concatenate(pieces).astype(np.float32)


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Low-frequency multiplicative texture around 1.0 so fills are not flat."""
    h, w = shape
    small = rng.normal(0.0, 1.0, (max(2, h // 8), max(2, w // 8))).astype(np.float32)
    tex = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return 1.0 + 0.25 * tex


def _signed_change(rng: np.random.Generator, strength: float, shape: tuple[int, int], dark: float) -> np.ndarray:
    """A textured intensity change of ``strength``'s contrast, darker with probability ``dark``."""
    polarity = -1.0 if rng.random() < dark else 1.0
    return polarity * _contrast(rng, strength) * _texture(rng, shape)


def _shade(image: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Darken or brighten under a soft alpha matte, with texture."""
    img = _as_hwc(image)
    delta = _signed_change(rng, strength, alpha.shape, dark=0.6)  # real defects on tiles are mostly darker
    out = np.clip(img + (alpha * delta)[..., None], 0.0, 1.0)
    return _like(out, image)


def _soft(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = float(rng.uniform(0.5, 2.0))
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def _random_center(rng: np.random.Generator, h: int, w: int, margin: float = 0.1) -> np.ndarray:
    return np.array([rng.uniform(margin * w, (1 - margin) * w), rng.uniform(margin * h, (1 - margin) * h)])


def bezier_blob(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5, **_: object):
    """Closed Bezier-curve blob (blowholes, stains), darker or brighter than its surroundings."""
    h, w = image.shape[:2]
    radius = float(rng.uniform(3, min(h, w) * 0.25))
    poly = _closed_bezier_polygon(rng, _random_center(rng, h, w), radius)
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, [np.round(poly).astype(np.int32)], 1)
    out = _shade(image, _soft(region, rng), rng, strength)
    return out, _changed(image, out)


def border_blob(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5,
                edge_sides: Sequence[str] = (), **_: object):
    """A small blob (blowhole, radius 2-8 px) touching one side of the crop or at most about 15 px
    from it, mostly dark. Real blowholes near a part's border sit in the outermost pixels of the inference tile that holds
    them; ``bezier_blob`` keeps its centre a tenth of the crop inside, so training never shows one
    there, and the network's map marks them less surely than inner ones. A side that lies on an
    image border (``edge_sides``) is taken when there is one."""
    h, w = image.shape[:2]
    side = str(rng.choice(list(edge_sides) or ["top", "bottom", "left", "right"]))
    radius = float(rng.uniform(2.0, 8.0))
    inward = radius + float(rng.uniform(-0.5 * radius, 10.0))  # the centre's distance from that side
    along = float(rng.uniform(radius, (w if side in ("top", "bottom") else h) - radius))
    cx, cy = {"top": (along, inward), "bottom": (along, h - 1 - inward),
              "left": (inward, along), "right": (w - 1 - inward, along)}[side]
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, [np.round(_closed_bezier_polygon(rng, np.array([cx, cy]), radius)).astype(np.int32)], 1)
    delta = _signed_change(rng, min(1.0, strength + 0.3), (h, w), dark=0.85)  # blowholes are holes: dark
    out = _like(np.clip(_as_hwc(image) + (_soft(region, rng) * delta)[..., None], 0.0, 1.0), image)
    return out, _changed(image, out)


def bezier_scratch(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5, **_: object):
    """Open Bezier stroke: scratches and cracks, thin, sometimes branching."""
    h, w = image.shape[:2]
    region = np.zeros((h, w), np.uint8)
    for _stroke in range(int(rng.integers(1, 3))):
        n_ctrl = int(rng.integers(3, 6))
        start = _random_center(rng, h, w, 0.0)
        span = rng.uniform(0.2, 0.9) * max(h, w)
        direction = rng.uniform(0, 2 * np.pi)
        ctrl = [start]
        for i in range(1, n_ctrl):
            direction += rng.normal(0, 0.6)
            ctrl.append(ctrl[-1] + span / (n_ctrl - 1) * np.array([np.cos(direction), np.sin(direction)]))
        curve = _bezier(np.stack(ctrl), 96)
        thickness = int(rng.integers(1, 4))
        cv2.polylines(region, [np.round(curve).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    alpha = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 0.6) if rng.random() < 0.5 else region.astype(np.float32)
    out = _shade(image, alpha, rng, min(1.0, strength + 0.3))
    return out, _changed(image, out)


def elastic_deformation(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5, **_: object):
    """Local elastic warp inside a blob (dents, bulges, warped texture)."""
    h, w = image.shape[:2]
    radius = float(rng.uniform(8, min(h, w) * 0.3))
    poly = _closed_bezier_polygon(rng, _random_center(rng, h, w), radius)
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, [np.round(poly).astype(np.int32)], 1)
    weight = cv2.GaussianBlur(region.astype(np.float32), (0, 0), radius / 4)
    amplitude = 2.0 + 10.0 * strength
    sigma = float(rng.uniform(3, 8))
    dx = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), sigma)
    dy = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), sigma)
    scale = amplitude / max(float(np.abs(np.stack([dx, dy])).max()), 1e-6)
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = grid_x + dx * scale * weight
    map_y = grid_y + dy * scale * weight
    out = cv2.remap(_as_hwc(image).astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = _like(out.reshape(_as_hwc(image).shape), image)
    displacement = np.hypot(dx, dy) * scale * weight
    # Geometry moved by at least a pixel and the intensity visibly changed there.
    return out, ((displacement > 1.0) & (_changed(image, out) > 0)).astype(np.float32)


def gradient_falloff(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5, **_: object):
    """Gray-level change with a Gaussian falloff into its surroundings (uneven regions)."""
    h, w = image.shape[:2]
    cx, cy = _random_center(rng, h, w, 0.0)
    sx, sy = rng.uniform(0.05, 0.35, 2) * np.array([w, h])
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xr = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    yr = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    alpha = np.exp(-0.5 * ((xr / sx) ** 2 + (yr / sy) ** 2)).astype(np.float32)
    amp = _contrast(rng, strength) * 1.3
    polarity = -1.0 if rng.random() < 0.6 else 1.0
    img = _as_hwc(image)
    out = np.clip(img + (polarity * amp * alpha)[..., None], 0.0, 1.0)
    out = _like(out, image)
    # The smooth tail is not a defect anyone would outline: label where the change is visible.
    mask = (alpha * amp > max(0.04, 0.35 * amp)).astype(np.float32) * _changed(image, out)
    return out, mask


def gaussian_point_cloud(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5, **_: object):
    """Points from a random bivariate Gaussian, convex-hulled and filled (irregular pits)."""
    h, w = image.shape[:2]
    center = _random_center(rng, h, w)
    scale = rng.uniform(2, min(h, w) * 0.15, 2)
    rot = rng.uniform(0, np.pi)
    r = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    cov = r @ np.diag(scale**2) @ r.T
    pts = rng.multivariate_normal(center, cov, int(rng.integers(8, 40)))
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    region = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(region, hull, 1)
    out = _shade(image, _soft(region, rng), rng, strength)
    return out, _changed(image, out)


def _perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2D gradient (Perlin) noise, shape divisible by nothing in particular (resized)."""
    gh, gw = res
    angles = rng.uniform(0, 2 * np.pi, (gh + 1, gw + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    size = 8 * max(gh, gw)
    ys = np.linspace(0, gh, size, endpoint=False)
    xs = np.linspace(0, gw, size, endpoint=False)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = yy - y0, xx - x0

    def dot(oy: int, ox: int) -> np.ndarray:
        g = grads[y0 + oy, x0 + ox]
        return g[..., 0] * (fx - ox) + g[..., 1] * (fy - oy)

    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    u, v = fade(fx), fade(fy)
    n0 = dot(0, 0) * (1 - u) + dot(0, 1) * u
    n1 = dot(1, 0) * (1 - u) + dot(1, 1) * u
    noise = (n0 * (1 - v) + n1 * v).astype(np.float32)
    return cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def perlin_texture(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5, **_: object):
    """Perlin-noise mask filled with texture taken from elsewhere in the same image."""
    h, w = image.shape[:2]
    res = (int(rng.integers(2, 6)), int(rng.integers(2, 6)))
    noise = _perlin((h, w), res, rng)
    threshold = float(np.quantile(noise, rng.uniform(0.85, 0.97)))
    region = (noise > threshold).astype(np.uint8)
    if region.sum() == 0:
        return image.copy(), np.zeros((h, w), np.float32)
    img = _as_hwc(image)
    k = int(rng.integers(1, 4))
    donor = np.rot90(img, k) if h == w else img[::-1, ::-1]
    donor = np.roll(donor, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
    # Shift the donor's brightness so faint settings stay faint and strong ones stand out.
    donor = np.clip(donor + (rng.choice([-1.0, 1.0]) * _contrast(rng, strength) * 0.6), 0.0, 1.0)
    beta = float(rng.uniform(0.5, 1.0))
    alpha = (_soft(region, rng) * beta)[..., None]
    out = _like(img * (1 - alpha) + donor * alpha, image)
    return out, _changed(image, out) * (alpha[..., 0] > 0.25)


def cutpaste_poisson(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5,
                     donors: Sequence[np.ndarray] = (), **_: object):
    """A patch from another OK image, Poisson-blended (``cv2.seamlessClone``) into this one."""
    h, w = image.shape[:2]
    donor = donors[int(rng.integers(len(donors)))] if len(donors) else image
    dh, dw = donor.shape[:2]
    ph = int(rng.integers(max(10, h // 8), max(11, h // 2)))
    pw = int(rng.integers(max(10, w // 8), max(11, w // 2)))
    ph, pw = min(ph, dh - 2, h - 4), min(pw, dw - 2, w - 4)
    if ph < 6 or pw < 6:
        return image.copy(), np.zeros((h, w), np.float32)
    sy, sx = int(rng.integers(0, dh - ph)), int(rng.integers(0, dw - pw))
    patch = _as_hwc(donor)[sy:sy + ph, sx:sx + pw]
    # Turn the donor's texture across the part's grain and raise its contrast: Poisson blending
    # keeps gradients, not levels, so only a texture that differs stays visible after cloning.
    patch = np.rot90(patch, int(rng.choice([1, 3])))[: h - 4, : w - 4]
    mean = patch.mean()
    patch = np.clip(mean + (patch - mean) * (1.5 + 2.5 * strength * rng.random()), 0, 1)
    ph, pw = patch.shape[:2]
    patch_mask = np.zeros((ph, pw), np.uint8)
    poly = _closed_bezier_polygon(rng, np.array([pw / 2, ph / 2]), min(ph, pw) / 2 - 1)
    cv2.fillPoly(patch_mask, [np.round(poly).astype(np.int32)], 255)
    if patch_mask.sum() == 0:
        return image.copy(), np.zeros((h, w), np.float32)
    cy = int(rng.integers(ph // 2 + 2, h - (ph - ph // 2) - 1)) if h - ph > 4 else h // 2
    cx = int(rng.integers(pw // 2 + 2, w - (pw - pw // 2) - 1)) if w - pw > 4 else w // 2
    img = _as_hwc(image)
    to_u8 = lambda a: np.repeat(np.clip(a * 255, 0, 255).astype(np.uint8), 3 // a.shape[2], axis=2)
    try:
        cloned = cv2.seamlessClone(to_u8(np.ascontiguousarray(patch)), to_u8(img), patch_mask, (cx, cy), cv2.NORMAL_CLONE)
    except cv2.error:  # OpenCV rejects some ROIs at the border; the caller retries another defect
        return image.copy(), np.zeros((h, w), np.float32)
    out = cloned.astype(np.float32)[..., : img.shape[2]] / 255.0
    out = _like(out, image)
    placed = np.zeros((h, w), np.uint8)
    y0, x0 = cy - ph // 2, cx - pw // 2
    placed[max(0, y0):y0 + ph, max(0, x0):x0 + pw] = patch_mask[max(0, -y0):h - y0, max(0, -x0):w - x0] > 0
    # On fine, regular textures the Poisson solution can be nearly invisible; a level shift under
    # the pasted region (scaled by strength) keeps the defect visible while edges stay seamless.
    out = _shade(out, _soft(placed, rng) * rng.uniform(0.3, 1.0), rng, strength)
    return out, _changed(image, out) * placed


def edge_chip(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5,
              edge_sides: Sequence[str] = ("top", "bottom", "left", "right"), background: float | None = None,
              **_: object):
    """A chip or break at the part's edge: a ragged region from one side replaced by background."""
    h, w = image.shape[:2]
    side = str(rng.choice(list(edge_sides) or ["top", "bottom", "left", "right"]))
    length = rng.uniform(0.1, 0.5) * (w if side in ("top", "bottom") else h)
    depth = rng.uniform(0.05, 0.3) * (h if side in ("top", "bottom") else w)
    start = rng.uniform(0, (w if side in ("top", "bottom") else h) - length)
    n = int(rng.integers(4, 9))
    along = np.sort(rng.uniform(start, start + length, n))
    inward = depth * rng.uniform(0.3, 1.0, n)
    inward[0] = inward[-1] = 0.0
    pts = np.stack([along, inward], axis=1)
    pts = np.concatenate([[[start, -2.0]], pts, [[start + length, -2.0]]])
    if side == "bottom":
        pts[:, 1] = h - 1 - pts[:, 1]
    elif side in ("left", "right"):
        pts = pts[:, ::-1].copy()
        if side == "right":
            pts[:, 0] = w - 1 - pts[:, 0]
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, [np.round(pts).astype(np.int32)], 1)
    img = _as_hwc(image)
    bg = float(np.quantile(img, 0.02)) * 0.5 if background is None else background
    if rng.random() < 0.3:  # a fresh fracture surface reads bright, not dark
        bg = min(1.0, float(np.quantile(img, 0.98)) + 0.1)
    fill = np.clip(bg + rng.normal(0, 0.02, (h, w)), 0, 1).astype(np.float32)
    alpha = _soft(region, rng)[..., None]
    out = _like(img * (1 - alpha) + fill[..., None] * alpha, image)
    return out, _changed(image, out) * (alpha[..., 0] > 0.1)


def _grain_is_vertical(image: np.ndarray) -> bool:
    """Ground or rolled surfaces vary across their grain: vertical streaks change more along x."""
    g = _as_hwc(image).mean(axis=2)
    return float(np.abs(np.diff(g, axis=1)).mean()) >= float(np.abs(np.diff(g, axis=0)).mean())


def _draw_grain(image: np.ndarray, rng: np.random.Generator) -> bool:
    """The direction a texture change follows: mostly the crop's own grain, sometimes either."""
    return _grain_is_vertical(image) if rng.random() < 0.8 else bool(rng.random() < 0.5)


def _streaks(rng: np.random.Generator, shape: tuple[int, int], vertical: bool) -> np.ndarray:
    """Zero-mean, unit-std streak texture: sharp across the grain, slowly varying along it, mostly
    bright lines on a plain ground."""
    h, w = shape
    along, across = (h, w) if vertical else (w, h)
    rows = max(2, along // int(rng.integers(6, 40)))
    noise = rng.normal(0.0, 1.0, (rows, across)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=float(rng.uniform(0.3, 1.5)), sigmaY=0.1)
    tex = cv2.resize(noise, (across, along), interpolation=cv2.INTER_LINEAR)
    tex = tex if vertical else tex.T
    if rng.random() < 0.7:  # grinding streaks read as fine bright lines more often than dark ones
        tex = np.maximum(tex, 0.0) ** 1.5
    return ((tex - tex.mean()) / max(float(tex.std()), 1e-6)).astype(np.float32)


def _large_region(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A band from one side with a wavy inner boundary, or a large blob that may leave the crop."""
    region = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:
        side = int(rng.integers(4))
        length, extent = (w, h) if side < 2 else (h, w)
        n = int(rng.integers(3, 7))
        along = np.linspace(-2, length + 1, n)
        depth = extent * rng.uniform(0.2, 0.75) + extent * 0.12 * rng.normal(0, 1, n)
        curve = _bezier(np.stack([along, np.clip(depth, 4, extent - 4)], axis=1), 64)
        pts = np.concatenate([[[-2.0, -2.0]], curve, [[length + 1.0, -2.0]]])  # (along, depth)
        if side in (1, 3):  # bottom or right: depth measured from the far side
            pts[:, 1] = extent - 1 - pts[:, 1]
        if side >= 2:  # left or right: along runs down the rows
            pts = pts[:, ::-1].copy()
        cv2.fillPoly(region, [np.round(pts).astype(np.int32)], 1)
    else:
        radius = float(rng.uniform(0.25, 0.6) * min(h, w))
        center = np.array([rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)])
        cv2.fillPoly(region, [np.round(_closed_bezier_polygon(rng, center, radius)).astype(np.int32)], 1)
    return region


def _step_band(rng: np.random.Generator, h: int, w: int, vertical: bool) -> np.ndarray:
    """A band from one side ending at a nearly straight line across the grain, slightly tilted
    and a little ragged: where one grinding pass stopped and another began."""
    along, across = (h, w) if vertical else (w, h)  # the band's depth runs along the grain
    depth = along * rng.uniform(0.15, 0.85)
    tilt = np.tan(rng.uniform(-0.25, 0.25))
    x = np.linspace(-2.0, across + 1.0, max(3, across // 4))  # a vertex every ~4 px, both ends outside
    edge = depth + tilt * (x - across / 2) + rng.normal(0, rng.uniform(0.0, 1.5), len(x))
    pts = np.concatenate([[[-2.0, -2.0]], np.stack([x, edge], axis=1), [[across + 1.0, -2.0]]])
    if rng.random() < 0.5:  # from the far side
        pts[:, 1] = along - 1 - pts[:, 1]
    if not vertical:  # the depth runs along the columns: (across, along) is (y, x)
        pts = pts[:, ::-1].copy()
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, [np.round(pts).astype(np.int32)], 1)
    return region


def uneven_finish(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5,
                  step: bool = False, **_: object):
    """A large region whose surface finish differs from the rest of the part (uneven grinding):
    its streaks stronger, weaker or new, its level a little shifted, with a diffuse boundary.
    With ``step`` (``uneven_step``) the region is a band ending at a sharp, nearly straight line
    across the grain, the shape most real uneven regions of magnetic tile have.

    Unlike the local generators, the mask is the whole region whose texture visibly changed (as
    an inspector outlines such areas), not every pixel that moved by more than ``CHANGE_EPS``:
    a texture change is visible as a region even where single pixels move by less."""
    h, w = image.shape[:2]
    # The plain variant draws in its original order (region, edge, grain), so that a seed gives the
    # stream it gave before ``step`` existed; the step band needs the grain first.
    vertical = _draw_grain(image, rng) if step else None
    region = _step_band(rng, h, w, vertical) if step else _large_region(rng, h, w)
    if not 0.08 * h * w <= region.sum() <= 0.85 * h * w:
        return image.copy(), np.zeros((h, w), np.float32)
    blur = rng.uniform(0.4, 1.5) if step else rng.uniform(1.5, 6.0)
    alpha = cv2.GaussianBlur(region.astype(np.float32), (0, 0), float(blur))
    img = _as_hwc(image)
    if vertical is None:
        vertical = _draw_grain(image, rng)
    local_mean = cv2.blur(img, (9, 1) if vertical else (1, 9)).reshape(img.shape)
    detail = img - local_mean  # the existing streaks
    amp = _contrast(rng, strength)
    gain = float(rng.uniform(0.6, 1.0 + 2.5 * strength)) if rng.random() < 0.7 else float(rng.uniform(0.2, 0.6))
    delta = (gain - 1.0) * detail + (amp * rng.uniform(0.05, 0.25) * _streaks(rng, (h, w), vertical))[..., None]
    if rng.random() < 0.6:
        delta = delta + (rng.choice([-1.0, 1.0]) * amp * rng.uniform(0.1, 0.5) * _texture(rng, (h, w)))[..., None]
    out = _like(np.clip(img + alpha[..., None] * delta, 0.0, 1.0), image)
    inside = alpha > 0.5
    change = np.abs(_as_hwc(out) - img).max(axis=2)
    if float(change[inside].mean()) < 0.6 * CHANGE_EPS:  # too faint to see even as a region
        return image.copy(), np.zeros((h, w), np.float32)
    return out, inside.astype(np.float32)


def grain_crack(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5, **_: object):
    """A thin, nearly straight crack running along the surface's grain. On ground surfaces cracks
    often follow the grinding direction and read as one darker, continuous streak among many;
    ``bezier_scratch`` draws its strokes in any direction and curved, so this case stays rare there."""
    h, w = image.shape[:2]
    vertical = _draw_grain(image, rng)
    along, across = (h, w) if vertical else (w, h)
    length = rng.uniform(0.25, 1.0) * along
    tilt = np.deg2rad(rng.normal(0.0, 4.0))
    start_along = rng.uniform(-0.2 * along, along - 0.5 * length)
    start_across = rng.uniform(0.05 * across, 0.95 * across)
    t = np.linspace(0.0, 1.0, 5)[:, None]
    wobble = rng.normal(0.0, 0.012 * length, (5, 1))
    pts_along = start_along + t * length * np.cos(tilt)
    pts_across = start_across + t * length * np.sin(tilt) + wobble
    ctrl = np.hstack([pts_across, pts_along]) if vertical else np.hstack([pts_along, pts_across])
    curve = _bezier(ctrl, 128)
    region = np.zeros((h, w), np.uint8)
    thickness = 1 if rng.random() < 0.6 else 2
    cv2.polylines(region, [np.round(curve).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    alpha = region.astype(np.float32)
    if rng.random() < 0.5:
        alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6)
    # the crack fades in and out along its length, as real ones open and close
    coord = np.arange(along, dtype=np.float32)
    centre, half = start_along + 0.5 * length * np.cos(tilt), 0.5 * length
    fade = np.clip(1.3 - np.abs(coord - centre) / max(half, 1.0), 0.15, 1.0)
    alpha *= fade[:, None] if vertical else fade[None, :]
    delta = _signed_change(rng, min(1.0, strength + 0.3), (h, w), dark=0.85)  # cracks are dark gaps
    out = _like(np.clip(_as_hwc(image) + (alpha * delta)[..., None], 0.0, 1.0), image)
    return out, _changed(image, out)


def uneven_step(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5, **context: object):
    """``uneven_finish`` in a band that ends at a sharp, nearly straight line across the grain."""
    return uneven_finish(image, rng, strength, step=True, **context)


GENERATORS: dict[str, Generator] = {
    "bezier_blob": bezier_blob,
    "border_blob": border_blob,
    "bezier_scratch": bezier_scratch,
    "elastic": elastic_deformation,
    "gradient": gradient_falloff,
    "point_cloud": gaussian_point_cloud,
    "perlin": perlin_texture,
    "cutpaste": cutpaste_poisson,
    "edge_chip": edge_chip,
    "uneven": uneven_finish,
    "uneven_step": uneven_step,
    "grain_crack": grain_crack,
}

# What training draws from unless told otherwise (``train --generators``): the shipped model's mix.
# ``uneven`` is listed three times, so a quarter of the synthetic defects are large regions of uneven
# finish: with it the map outlines real uneven regions.
# ``uneven_step`` is not in it: in place of two of those it raised pixel AUROC by 0.006-0.012 over two
# seeds and lowered crack AUPRO, and in decoder fine-tunes it
# did nothing. At half scale, where a tile spans the part's height, it is what the shipped coarse-map
# network draws (in place of two ``uneven``): pixel AUROC 0.928 -> 0.953 over the split, on two seeds.
# ``grain_crack`` is not in it
# either: added to this mix in fine-tunes of the shipped weights it raised AUPRO by 0.021 / 0.026 over
# two seeds, but from scratch it has not been measured. ``border_blob``
# is not in it: it was drawn only in the shipped decoder's last fine-tune (3 of 15 draws, 500 steps, encoder frozen);
# from scratch it has not been measured.
DEFAULT_GENERATORS: tuple[str, ...] = ("bezier_blob", "bezier_scratch", "elastic", "gradient", "point_cloud",
                                       "perlin", "cutpaste", "edge_chip", "uneven", "uneven", "uneven")

MIN_DEFECT_PX = 4


def synthesize(image: np.ndarray, rng: np.random.Generator, strength: float = 0.5,
               names: Sequence[str] | None = None, tries: int = 4, **context: object):
    """Apply one random generator (a name listed twice is drawn twice as often); retry a few times
    if it changed (almost) nothing."""
    names = list(names or DEFAULT_GENERATORS)
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown defect generator(s) {unknown}; valid: {sorted(GENERATORS)}")
    for _ in range(tries):
        name = str(rng.choice(names))
        out, mask = GENERATORS[name](image, rng, strength, **context)
        if mask.sum() >= MIN_DEFECT_PX:
            return out.astype(np.float32), mask.astype(np.float32), name
    return image.copy(), np.zeros(image.shape[:2], np.float32), "none"
