"""The paper's six defect types, drawn as edits of a scene's height and yield maps.

Every drawer returns a :class:`DefectPlan`: target maps, a blending weight ``alpha`` that is zero
outside the defect's footprint, and the ground-truth mask. The scene is only changed where
``alpha > 0`` and the mask is where ``alpha >= 0.5`` (bridges: only where the gap was filled), so
the mask covers exactly what was drawn; imaging later spreads the change by the beam blur (about
two pixels). Plans are made whether or not they are applied, which lets tests render the same
image with and without its defect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from semclip_bench.data.synth.fields import log_uniform, pixel_grid, smooth_noise, smoothstep
from semclip_bench.data.synth.raster import (
    dilate3,
    f32,
    nearest_zero,
    polyline_pixels,
    remap_bilinear,
)
from semclip_bench.data.synth.scene import Scene

#: Smallest mask (pixels) a defect may have; smaller draws are redrawn.
MIN_MASK_PX = 4

_CONTRAST_FLOOR = {"infilm": 0.45, "scratch": 0.35, "copper_residue": 0.3}


@dataclass
class DefectPlan:
    """One defect ready to blend into a scene: ``x + alpha * (target - x)`` for both maps."""

    height: np.ndarray
    material: np.ndarray
    alpha: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any]

    def apply(self, scene: Scene) -> None:
        """Blend the defect into ``scene`` in place."""
        scene.height = scene.height + self.alpha * (self.height - scene.height)
        scene.material = scene.material + self.alpha * (self.material - scene.material)


def plan_defect(
    kind: str,
    scene: Scene,
    rng: np.random.Generator,
    *,
    size_range: tuple[float, float],
    hard_fraction: float,
    rows: int,
    detector_azimuth: float,
) -> DefectPlan:
    """Draw a ``kind`` defect in the rows ``[0, rows)`` (above the data bar) of ``scene``.

    ``size_range`` is in pixels of this image. A hard defect is small and low in contrast.
    Redraws (deterministically, from ``rng``) until the mask has at least ``MIN_MASK_PX`` pixels.
    """
    drawer = _DRAWERS[kind]
    size = scene.height.shape[0]
    for attempt in range(48):
        hard = bool(rng.random() < hard_fraction)
        lo, hi = size_range
        hi = max(min(hi, 0.4 * rows), lo)
        if hard:
            d = log_uniform(rng, lo, max(lo, min(hi, 2.2 * lo)))
            contrast = float(rng.uniform(0.3, 0.6))
        else:
            d = log_uniform(rng, lo, hi)
            contrast = float(rng.uniform(0.7, 1.0))
        # Faint by nature (buried / hair-thin): keep a floor so that hard ones stay detectable.
        floor = _CONTRAST_FLOOR.get(kind, 0.0)
        contrast = floor + (1.0 - floor) * contrast
        plan = drawer(scene, rng, d, contrast, rows, detector_azimuth)
        # Faint fringes (soft edges, lone fragments below the 0.5 cut) stay within a pixel of
        # the mask: nothing changes where the mask is not.
        near = dilate3(plan.mask)
        plan.alpha = plan.alpha * near
        if plan.alpha[rows:].any():  # would reach under the data bar: draw again
            continue
        plan.mask[rows:] = False  # (already empty: the mask lies where alpha > 0)
        frame = plan.mask[[0, -1]].any() or plan.mask[:, [0, -1]].any()
        if frame and attempt < 32:  # cut by the image border: draw again (tiny images: accept)
            continue
        area = int(plan.mask.sum())
        if area >= MIN_MASK_PX:
            ys, xs = np.nonzero(plan.mask)
            plan.meta.update(
                {
                    "defect_type": kind,
                    "hard": hard,
                    "contrast": round(contrast, 3),
                    "size_px": int(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1),
                    "area_px": area,
                    "centroid_yx": [round(float(ys.mean()), 2), round(float(xs.mean()), 2)],
                    "bbox": [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1],
                }
            )
            return plan
    # Not seen in thousands of draws from 32 to 512 px; kept as a loud failure, never a blank.
    raise RuntimeError(f"could not place a {kind} defect in a {size}x{size} image")


# Every drawer takes (scene, rng, size d in px, contrast in (0, 1], rows above the data bar,
# detector azimuth in radians) and returns a plan; ``plan_defect`` validates and records it.


def _centre(rng: np.random.Generator, extent: float, rows: int, size: int) -> tuple[float, float]:
    """A centre whose +-extent box lies inside rows [0, rows) and the image columns."""
    m = 1.0
    ey = min(extent + m, rows / 2 - 0.5)
    ex = min(extent + m, size / 2 - 0.5)
    return float(rng.uniform(ey, rows - ey)), float(rng.uniform(ex, size - ex))


def _rotated_frame(
    rng: np.random.Generator, size: int, cy: float, cx: float, max_aspect: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (a, b) in a frame centred at (cy, cx), rotated by a random angle and with
    b stretched by a random aspect in [1, max_aspect): |(a, b)| = r draws a random ellipse."""
    yy, xx = pixel_grid(size)
    aspect = float(rng.uniform(1.0, max_aspect))
    theta = float(rng.uniform(0, np.pi))
    c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    dy, dx = yy - np.float32(cy), xx - np.float32(cx)
    return dx * c + dy * s, (-dx * s + dy * c) * np.float32(aspect)


def _polar_blob(
    rng: np.random.Generator, size: int, cy: float, cx: float, radius: float, wobble: float
) -> tuple[np.ndarray, np.ndarray]:
    """(signed distance inside an irregular round outline, normalised radius r / R) maps."""
    a, b = _rotated_frame(rng, size, cy, cx, 1.0 + 0.5 * wobble)
    dist = np.sqrt(a * a + b * b)
    phi = np.arctan2(b.astype(np.float64), a.astype(np.float64)).astype(np.float32)
    outline = np.ones_like(dist)
    for k in (2, 3, 5):
        outline += np.float32(wobble * rng.uniform(0, 0.5) / k) * f32(
            np.cos, k * phi + np.float32(rng.uniform(0, 2 * np.pi))
        )
    r_out = np.float32(radius) * outline
    return r_out - dist, dist / np.maximum(r_out, 1e-3)


def _particle(
    scene: Scene,
    rng: np.random.Generator,
    d: float,
    contrast: float,
    rows: int,
    azimuth: float,
) -> DefectPlan:
    """Bright, sharp-edged fall-on particle standing on the surface, with a dark shadow."""
    size = scene.height.shape[0]
    radius = max(d / 2, 1.0)
    cy, cx = _centre(rng, 1.5 * radius + 1, rows, size)
    inside, rn = _polar_blob(rng, size, cy, cx, radius, wobble=float(rng.uniform(0.1, 0.6)))
    core = smoothstep(inside, 0.6)
    dome = np.sqrt(np.clip(1.0 - rn * rn, 0.0, 1.0))
    # Standing on the surface: a steep outline (bright edge) and a rounded top.
    h_new = scene.top_height + contrast * (1.0 + 0.8 * dome)
    bright = float(rng.uniform(0.5, 0.85))
    sparkle = 0.06 * smooth_noise(rng, size, max(radius / 3, 1.0))
    m_target = scene.material + contrast * (bright + sparkle - scene.material)
    # Shadow: the particle blocks secondary electrons on the side away from the detector.
    yy, xx = pixel_grid(size)
    off = 0.5 * radius + 1.0
    sy, sx = cy - off * math.sin(azimuth), cx - off * math.cos(azimuth)
    ds = np.sqrt((yy - np.float32(sy)) ** 2 + (xx - np.float32(sx)) ** 2)
    shadow = smoothstep(np.float32(1.1 * radius + 0.5) - ds, 1.2)
    darken = 1.0 - contrast * float(rng.uniform(0.45, 0.7)) * shadow
    height = np.where(core > 0, h_new, scene.height).astype(np.float32)
    material = (core * m_target + (1.0 - core) * scene.material * darken).astype(np.float32)
    # Footprint: particle, its shadow and the one-pixel bright edge around it.
    alpha = np.clip(smoothstep(inside + 1.0, 0.8) + shadow, 0.0, 1.0).astype(np.float32)
    return DefectPlan(height, material, alpha, alpha >= 0.5, {"shadow": True})


def _hole(
    scene: Scene,
    rng: np.random.Generator,
    d: float,
    contrast: float,
    rows: int,
    azimuth: float,
) -> DefectPlan:
    """Void / pit: a dark depression with a bright rim (edge brightening at its lip)."""
    size = scene.height.shape[0]
    radius = max(d / 2, 1.0)
    cy, cx = _centre(rng, 1.2 * radius + 1, rows, size)
    inside, _ = _polar_blob(rng, size, cy, cx, radius, wobble=float(rng.uniform(0.0, 0.3)))
    core = smoothstep(inside + 0.5, 0.8)
    depth = contrast * float(rng.uniform(0.8, 1.4))
    # Bright rim: the lip of the pit emits more secondary electrons (edge effect), dark floor.
    rim_w = max(0.22 * radius, 1.2)
    rim = np.clip(1.0 - np.abs(inside - rim_w / 2) / (rim_w / 2 + 0.5), 0.0, 1.0)
    dark = float(rng.uniform(0.03, 0.12))
    material = scene.material + contrast * (dark - scene.material) * (1.0 - rim)
    material = material + contrast * float(rng.uniform(0.35, 0.6)) * rim
    height = (scene.height - depth * core).astype(np.float32)
    # The footprint includes the rim just outside the depression.
    alpha = smoothstep(inside + 1.5, 0.8)
    return DefectPlan(height, material.astype(np.float32), alpha, alpha >= 0.5, {})


def _residue(
    scene: Scene,
    rng: np.random.Generator,
    d: float,
    contrast: float,
    rows: int,
    azimuth: float,
) -> DefectPlan:
    """Copper residue: an irregular, patchy, grainy film left on the surface after CMP."""
    size = scene.height.shape[0]
    radius = max(0.9 * d, 1.5)
    cy, cx = _centre(rng, 1.3 * radius + 1, rows, size)
    a, b = _rotated_frame(rng, size, cy, cx, 2.0)
    rn = np.sqrt(a * a + b * b) / np.float32(radius)
    lumpy = smooth_noise(rng, size, max(radius / 3, 1.5))
    level = 1.0 - rn * rn + 0.45 * np.clip(lumpy, -2.0, 2.0)
    cover = smoothstep(level - 0.3, 0.15) * (rn < 1.3)
    opacity = contrast * float(rng.uniform(0.7, 1.0))
    grain = 0.1 * smooth_noise(rng, size, 1.3) + 0.06 * smooth_noise(rng, size, 3.0)
    # Copper is brighter than the dielectric and resist around it; the film is grainy.
    film = float(scene.material.mean()) + float(rng.uniform(0.2, 0.4))
    material = scene.material + opacity * (film + grain - scene.material)
    height = scene.height + opacity * (0.6 * (scene.top_height - scene.height) + 0.35 + 0.1 * lumpy)
    alpha = cover.astype(np.float32)
    return DefectPlan(
        height.astype(np.float32), material.astype(np.float32), alpha, alpha >= 0.5, {}
    )


def _infilm(
    scene: Scene,
    rng: np.random.Generator,
    d: float,
    contrast: float,
    rows: int,
    azimuth: float,
) -> DefectPlan:
    """In-film defect: a buried blob that bulges the film, distorts the pattern, low contrast."""
    size = scene.height.shape[0]
    radius = max(1.0 * d, 4.0)
    cy, cx = _centre(rng, radius + 1, rows, size)
    a, b = _rotated_frame(rng, size, cy, cx, 1.6)
    yy, xx = pixel_grid(size)
    dy, dx = yy - np.float32(cy), xx - np.float32(cx)  # unrotated offsets, for the warp below
    rn2 = (a * a + b * b) / np.float32(radius * radius)
    bump = np.clip(1.0 - rn2 * rn2, 0.0, 1.0) ** 2  # smooth, flat-topped, zero at the rim
    # Seen through the bulged film the pattern is magnified (a lens): sample closer to the
    # centre, by a factor that is 1 at the rim, so the warp is continuous.
    shrink = 1.0 - np.float32(contrast * rng.uniform(0.3, 0.55)) * bump
    map_x = (np.float32(cx) + dx * shrink).astype(np.float32)
    map_y = (np.float32(cy) + dy * shrink).astype(np.float32)
    warped_h = remap_bilinear(scene.height, map_x, map_y)
    warped_m = remap_bilinear(scene.material, map_x, map_y)
    sign = 1.0 if rng.random() < 0.6 else -1.0
    # Seen through more film: the pattern's contrast fades towards a brighter or darker haze
    # (the blob's own yield) that differs from the local mean, so the blob always shows.
    local = float(warped_m[bump > 0.05].mean())
    haze = local + sign * contrast * float(rng.uniform(0.15, 0.3))
    wash = np.float32(contrast * rng.uniform(0.5, 0.8)) * bump
    material = warped_m + wash * (np.float32(haze) - warped_m)
    height = warped_h + np.float32(contrast * rng.uniform(0.1, 0.3)) * bump
    alpha = (rn2 < 1.0).astype(np.float32)
    mask = bump > 0.05
    return DefectPlan(height.astype(np.float32), material.astype(np.float32), alpha, mask, {})


def _scratch(
    scene: Scene,
    rng: np.random.Generator,
    d: float,
    contrast: float,
    rows: int,
    azimuth: float,
) -> DefectPlan:
    """Long, thin, gently curved groove (CMP scratch) crossing the pattern, tapered ends."""
    size = scene.height.shape[0]
    s = size / 256.0
    width = float(np.clip(d / 3.0, 1.5 * max(s, 0.5), 7.0 * max(s, 0.5)))
    hw = width / 2
    margin = hw + 2
    length = float(rng.uniform(0.35, 1.1)) * min(rows, size)
    for _ in range(32):
        p0 = np.array([rng.uniform(margin, rows - margin), rng.uniform(margin, size - margin)])
        ang = rng.uniform(0, 2 * np.pi)
        p2 = p0 + length * np.array([math.sin(ang), math.cos(ang)])
        if margin <= p2[0] <= rows - margin and margin <= p2[1] <= size - margin:
            break
        length *= 0.9
    else:
        p2 = np.clip(p2, margin, [rows - margin, size - margin])
    bend = float(rng.uniform(-0.2, 0.2)) * np.linalg.norm(p2 - p0)
    normal = np.array([-(p2 - p0)[1], (p2 - p0)[0]]) / max(np.linalg.norm(p2 - p0), 1e-6)
    p1 = (p0 + p2) / 2 + bend * normal
    p1 = np.clip(p1, margin, [rows - margin, size - margin])
    t = np.linspace(0.0, 1.0, 96)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier (y, x)
    centre = np.ones((size, size), np.uint8)
    line = polyline_pixels(np.round(curve[:, ::-1]).astype(np.int64))
    inside = (line[:, 0] >= 0) & (line[:, 0] < size) & (line[:, 1] >= 0) & (line[:, 1] < size)
    centre[line[inside, 1], line[inside, 0]] = 0
    dist, near_y, near_x = nearest_zero(centre)
    # Position along the scratch of every pixel's nearest centre-line pixel, for the taper at
    # both ends.
    ys, xs = np.nonzero(centre == 0)
    near = np.argmin(
        (ys[:, None] - curve[None, :, 0]) ** 2 + (xs[:, None] - curve[None, :, 1]) ** 2, 1
    )
    along = np.zeros((size, size), np.float32)
    along[ys, xs] = t[near, 0]
    pos = along[near_y, near_x]
    taper = np.sqrt(np.clip(f32(np.sin, np.pi * pos), 0.0, 1.0)) * 0.7 + 0.3
    half = np.float32(hw) * taper
    # Steep-walled groove: the walls light up (edge effect), the floor is dark.
    groove = smoothstep(half - dist, 1.0)
    depth = contrast * float(rng.uniform(0.6, 1.2))
    height = scene.height - np.float32(depth) * groove
    floor = np.float32(contrast * rng.uniform(0.5, 0.85)) * groove
    material = scene.material + floor * (np.float32(0.04) - scene.material)
    alpha = smoothstep(half + 0.5 - dist, 0.8)
    return DefectPlan(
        height.astype(np.float32),
        material.astype(np.float32),
        alpha,
        alpha >= 0.5,
        {"length_px": round(float(np.linalg.norm(p2 - p0)), 2), "width_px": round(width, 2)},
    )


def _bridge(
    scene: Scene,
    rng: np.random.Generator,
    d: float,
    contrast: float,
    rows: int,
    azimuth: float,
) -> DefectPlan:
    """Material joining two neighbouring features across the gap between them."""
    size = scene.height.shape[0]
    gaps = scene.gaps.reshape(-1, 2)
    width = float(np.clip(d / 1.5, 1.5, 2 * scene.gap_halfwidth_max))
    hw = min(width / 2, scene.gap_halfwidth_max)
    # Pick a point, find the gap it lies in or next to, and span that gap (sometimes two).
    cy, cx = _centre(rng, hw + 2.0, rows, size)
    iy, ix = min(int(cy), size - 1), int(cx)
    u0, v0 = float(scene.across[iy, ix]), float(scene.along[iy, ix])
    j = int(np.clip(np.searchsorted(gaps[:, 0], u0) - 1, 0, len(gaps) - 1))
    n_gaps = 2 if (rng.random() < 0.2 and j + 1 < len(gaps)) else 1
    u_a, u_b = gaps[j, 0], gaps[j + n_gaps - 1, 1]
    if scene.along_period:  # a row of holes: run along the centre line of the point's row
        v0 = (np.floor(v0 / scene.along_period) + 0.5) * scene.along_period
    overlap = 1.5
    across, along = scene.across, scene.along
    du = np.minimum(across - np.float32(u_a - overlap), np.float32(u_b + overlap) - across)
    tt = np.clip((across - np.float32(u_a)) / np.float32(max(u_b - u_a, 1e-3)), 0.0, 1.0)
    neck = float(rng.uniform(0.0, 0.4))
    rough = 0.4 * smooth_noise(rng, size, 2.0)
    half = np.float32(hw) * (1.0 - neck * f32(np.sin, np.pi * tt)) + rough
    dv = half - np.abs(along - np.float32(v0))
    alpha = smoothstep(np.minimum(du, dv), 0.8)
    # Only the filled part of the gap is defect; the features it joins are unchanged.
    alpha = alpha * (~scene.feature)
    fill = contrast
    height = scene.height + fill * (scene.feature_height - scene.height)
    material = scene.material + fill * (scene.feature_material - scene.material)
    mask = (alpha >= 0.5) & ~scene.feature
    return DefectPlan(
        height.astype(np.float32),
        material.astype(np.float32),
        alpha.astype(np.float32),
        mask,
        {"gaps_spanned": n_gaps},
    )


_DRAWERS = {
    "bridge": _bridge,
    "copper_residue": _residue,
    "hole": _hole,
    "infilm": _infilm,
    "particle": _particle,
    "scratch": _scratch,
}
