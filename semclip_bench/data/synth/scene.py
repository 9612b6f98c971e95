"""Defect-free wafer patterns (the three families) as height and secondary-electron-yield maps.

A scene is physical, not an image: ``height`` (0 = trench / hole bottom, 1 = feature top) drives
the topographic contrast (edge brightening, shading) in :mod:`.imaging`; ``material`` is the
secondary-electron yield of what is at the surface. Defects edit both maps before imaging, so
edges, blur and noise treat a defect exactly like the pattern around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semclip_bench.data.synth.fields import (
    log_uniform,
    pixel_grid,
    rotate,
    smooth_noise,
    smoothstep,
)
from semclip_bench.data.synth.raster import zero_labels

# (name, feature yield range, background yield range) per family.
_LINE_MATERIALS = (
    ("photoresist", (0.28, 0.40), (0.16, 0.26)),
    ("polysilicon", (0.34, 0.48), (0.18, 0.28)),
    ("tungsten", (0.45, 0.60), (0.20, 0.30)),
    ("silicon_nitride", (0.30, 0.42), (0.18, 0.26)),
)
_CONTACT_MATERIALS = (
    ("open_contact_in_oxide", (0.04, 0.10), (0.34, 0.46)),
    ("via_in_low_k", (0.05, 0.12), (0.30, 0.40)),
    ("tungsten_plug_in_oxide", (0.62, 0.78), (0.26, 0.36)),
)
_METAL_MATERIALS = (
    ("copper_in_low_k", (0.50, 0.64), (0.20, 0.28)),
    ("copper_in_oxide", (0.52, 0.66), (0.24, 0.32)),
    ("tungsten_in_oxide", (0.55, 0.68), (0.26, 0.34)),
)


@dataclass
class Scene:
    """Height and yield maps of one field of view plus what a defect needs to know about it.

    ``feature`` marks the pattern's features (lines, holes, metal); ``feature_height`` and
    ``feature_material`` are what a pixel would be if it were feature, used to draw bridges.
    ``across``/``along`` are pattern coordinates (pixels) for bridges; ``gap`` maps a point's
    ``across`` coordinate to the neighbouring-feature gap ``(start, end)`` along ``across``.
    """

    family: str
    height: np.ndarray
    material: np.ndarray
    feature: np.ndarray
    feature_height: float
    feature_material: np.ndarray
    top_height: float
    pixel_nm: float
    across: np.ndarray
    along: np.ndarray
    gaps: np.ndarray  # sorted boundaries: gap j spans gaps[2j] .. gaps[2j+1] along ``across``
    gap_halfwidth_max: float  # bridges wider than this would touch the next row of features
    along_period: float | None = None  # rows of features along ``along`` (contact arrays)
    meta: dict[str, Any] = field(default_factory=dict)


def build_scene(family: str, rng: np.random.Generator, size: int, max_rotation_deg: float) -> Scene:
    """Draw one defect-free field of view of ``family``."""
    builders = {
        "line_space": _line_space,
        "contact_array": _contact_array,
        "metal_cmp": _metal_cmp,
    }
    return builders[family](rng, size, max_rotation_deg)


def _pixel_nm(rng: np.random.Generator, size: int) -> float:
    # Field of view about 0.4 - 3 µm whatever the image size (a 64 px test image is a coarse scan).
    return log_uniform(rng, 1.6, 12.0) * 256.0 / size


def _orientation(rng: np.random.Generator, max_rotation_deg: float) -> tuple[float, float]:
    base = float(rng.choice([0.0, 90.0, 0.0, 90.0, 45.0, 135.0]))
    rot = float(rng.uniform(-max_rotation_deg, max_rotation_deg))
    return base, rot


def _periodic_gaps(start: float, pitch: float, width: float, span: float) -> np.ndarray:
    """Boundaries of the gaps [k*pitch + start, k*pitch + start + width] covering +-span."""
    k = np.arange(-np.ceil(span / pitch) - 2, np.ceil(span / pitch) + 3)
    lo = k * pitch + start
    return np.stack([lo, lo + width], axis=1).reshape(-1).astype(np.float64)


def _line_space(rng: np.random.Generator, size: int, max_rot: float) -> Scene:
    s = size / 256.0
    yy, xx = pixel_grid(size)
    pitch = max(log_uniform(rng, 10.0, 40.0) * s, 6.0)
    duty = float(rng.uniform(0.32, 0.62))
    cd = pitch * duty
    base, rot = _orientation(rng, max_rot)
    name, (f_lo, f_hi), (b_lo, b_hi) = _LINE_MATERIALS[int(rng.integers(len(_LINE_MATERIALS)))]
    m_line, m_space = float(rng.uniform(f_lo, f_hi)), float(rng.uniform(b_lo, b_hi))
    sidewall = float(rng.uniform(1.0, 2.4)) * max(s, 0.5)
    ler = min(float(rng.uniform(0.2, 0.9)) * max(s, 0.5), 0.08 * cd)
    phase = float(rng.uniform(0.0, pitch))
    ler_corr = float(rng.uniform(2.0, 5.0)) * max(s, 0.5)
    tex_amp = float(rng.uniform(0.01, 0.035))

    u, v = rotate(yy, xx, base + rot, size / 2, size / 2)
    up = u + np.float32(phase) + np.float32(ler) * smooth_noise(rng, size, ler_corr)
    # Signed distance to the nearest line edge (> 0 on a line): lines centred at k*pitch + cd/2.
    w = up - np.float32(cd / 2)
    dist = np.float32(cd / 2) - np.abs(w - np.float32(pitch) * np.rint(w / np.float32(pitch)))
    height = smoothstep(dist, sidewall)
    texture = tex_amp * smooth_noise(rng, size, 1.5 * max(s, 0.5))
    feature_material = (m_line + texture).astype(np.float32)
    material = (m_space + (feature_material - m_space) * height + 0.5 * texture).astype(np.float32)
    gaps = _periodic_gaps(cd - phase, pitch, pitch - cd, size)
    return Scene(
        family="line_space",
        height=height,
        material=material,
        feature=height >= 0.5,
        feature_height=1.0,
        feature_material=feature_material,
        top_height=1.0,
        pixel_nm=_pixel_nm(rng, size),
        across=u,
        along=v,
        gaps=gaps,
        gap_halfwidth_max=size / 2,
        meta={
            "family": "line_space",
            "pitch_px": round(pitch, 3),
            "cd_px": round(cd, 3),
            "orientation_deg": round(base + rot, 3),
            "material": name,
            "ler_px": round(ler, 3),
        },
    )


def _contact_array(rng: np.random.Generator, size: int, max_rot: float) -> Scene:
    s = size / 256.0
    yy, xx = pixel_grid(size)
    px = max(log_uniform(rng, 14.0, 44.0) * s, 8.0)
    py = px * float(rng.choice([1.0, 1.0, rng.uniform(0.8, 1.3)]))
    stagger = bool(rng.random() < 0.3)
    diam = min(px, py) * float(rng.uniform(0.38, 0.62))
    rot = float(rng.uniform(-max_rot, max_rot))
    name, (f_lo, f_hi), (b_lo, b_hi) = _CONTACT_MATERIALS[
        int(rng.integers(len(_CONTACT_MATERIALS)))
    ]
    filled = name.startswith("tungsten")
    m_hole, m_top = float(rng.uniform(f_lo, f_hi)), float(rng.uniform(b_lo, b_hi))
    sidewall = float(rng.uniform(0.6, 1.5)) * max(s, 0.5)
    cdu = float(rng.uniform(0.02, 0.08))  # hole-to-hole size variation
    ler = min(float(rng.uniform(0.2, 0.8)) * max(s, 0.5), 0.1 * diam)
    ox, oy = float(rng.uniform(0, px)), float(rng.uniform(0, py))
    table = rng.standard_normal((16, 16)).astype(np.float32)
    tex_amp = float(rng.uniform(0.01, 0.03))

    u, v = rotate(yy, xx, rot, size / 2, size / 2)
    u = u + np.float32(ox)
    v = v + np.float32(oy)
    row = np.floor(v / np.float32(py))
    row_i = row.astype(np.int32)
    if stagger:
        u = u - (row_i & 1).astype(np.float32) * np.float32(px / 2)
    col = np.floor(u / np.float32(px))
    du = u - (col + 0.5) * np.float32(px)
    dv = v - (row + 0.5) * np.float32(py)
    cell = (row_i & 15) * 16 + (col.astype(np.int32) & 15)
    radius = np.float32(diam / 2) * (1.0 + cdu * np.take(table.ravel(), cell))
    r = np.sqrt(du * du + dv * dv) + np.float32(ler) * smooth_noise(rng, size, 2.0 * max(s, 0.5))
    hole = smoothstep(radius - r, sidewall)  # 1 inside the hole
    texture = tex_amp * smooth_noise(rng, size, 1.5 * max(s, 0.5))
    if filled:  # plugs polished flush with the dielectric: material contrast, slight recess
        height = (1.0 - 0.15 * hole).astype(np.float32)
        feature_height = 0.85
    else:
        height = (1.0 - hole).astype(np.float32)
        feature_height = 0.0
    feature_material = np.full((size, size), m_hole, np.float32) + 0.5 * texture
    material = (m_top + texture + (feature_material - m_top - texture) * hole).astype(np.float32)
    # Bridges run along a row of holes: from one hole centre to the next.
    gaps = _periodic_gaps(0.5 * px, px, px, size)
    return Scene(
        family="contact_array",
        height=height,
        material=material,
        feature=hole >= 0.5,
        feature_height=feature_height,
        feature_material=feature_material,
        top_height=1.0,
        pixel_nm=_pixel_nm(rng, size),
        across=u,
        along=v,
        gaps=gaps,
        gap_halfwidth_max=0.3 * py,
        along_period=py,
        meta={
            "family": "contact_array",
            "pitch_px": round(px, 3),
            "pitch_y_px": round(py, 3),
            "cd_px": round(diam, 3),
            "orientation_deg": round(rot, 3),
            "material": name,
            "staggered": stagger,
        },
    )


def _metal_cmp(rng: np.random.Generator, size: int, max_rot: float) -> Scene:
    s = size / 256.0
    yy, xx = pixel_grid(size)
    base = float(rng.choice([0.0, 90.0]))
    rot = float(rng.uniform(-max_rot, max_rot))
    name, (f_lo, f_hi), (b_lo, b_hi) = _METAL_MATERIALS[int(rng.integers(len(_METAL_MATERIALS)))]
    m_metal, m_diel = float(rng.uniform(f_lo, f_hi)), float(rng.uniform(b_lo, b_hi))
    # Lines of mixed widths (narrow signal lines, wide buses) separated by dielectric spaces.
    n_max = int(2 * size / (6 * max(s, 0.25))) + 8
    wide = rng.random(n_max) < 0.25
    widths = np.where(wide, rng.uniform(22, 64, n_max), rng.uniform(6, 18, n_max)) * max(s, 0.4)
    spaces = rng.uniform(5, 20, n_max) * max(s, 0.4)
    widths = np.maximum(widths, 3.0)
    spaces = np.maximum(spaces, 3.0)
    steps = np.stack([spaces, widths], axis=1).reshape(-1)
    bounds = np.concatenate([[0.0], np.cumsum(steps)]) - size * 0.75 - rng.uniform(0, 20)
    # bounds[2j] .. bounds[2j+1] is dielectric, bounds[2j+1] .. bounds[2j+2] is metal.
    sidewall = float(rng.uniform(0.6, 1.2)) * max(s, 0.5)
    u, v = rotate(yy, xx, base + rot, size / 2, size / 2)
    idx = np.searchsorted(bounds, u.ravel(), side="right").reshape(u.shape) - 1
    idx = np.clip(idx, 0, len(bounds) - 2)
    lo, hi = bounds[idx].astype(np.float32), bounds[idx + 1].astype(np.float32)
    d_edge = np.minimum(u - lo, hi - u)
    in_metal = (idx % 2) == 1
    metal = smoothstep(d_edge * (2.0 * in_metal - 1.0).astype(np.float32), sidewall)

    # Copper grains: a Voronoi tessellation (nearest seed labels), one brightness per grain
    # (channelling contrast) and thin dark grain boundaries.
    grain = max(log_uniform(rng, 5.0, 16.0) * s, 2.0)
    n_seeds = max(int(size * size / (grain * grain)), 4)
    seeds = rng.integers(0, size, size=(n_seeds, 2))
    src = np.ones((size, size), np.uint8)
    src[seeds[:, 0], seeds[:, 1]] = 0
    labels = zero_labels(src)  # nearest seed (exact Euclidean), seeds numbered in scan order
    grain_amp = float(rng.uniform(0.04, 0.12))
    lut = (grain_amp * rng.standard_normal(n_seeds + 1)).astype(np.float32)
    grains = lut[labels]
    boundary = np.zeros((size, size), np.float32)
    boundary[:, 1:] += labels[:, 1:] != labels[:, :-1]
    boundary[1:, :] += labels[1:, :] != labels[:-1, :]
    gb_depth = float(rng.uniform(0.03, 0.1))
    metal_map = (m_metal + grains - gb_depth * np.minimum(boundary, 1.0)).astype(np.float32)
    diel_tex = float(rng.uniform(0.01, 0.025)) * smooth_noise(rng, size, 1.2 * max(s, 0.5))
    material = (m_diel + diel_tex + (metal_map - m_diel - diel_tex) * metal).astype(np.float32)
    dishing = float(rng.uniform(0.05, 0.2))
    height = (0.8 - dishing * metal).astype(np.float32)
    metal_cd = float(np.median(widths))
    return Scene(
        family="metal_cmp",
        height=height,
        material=material,
        feature=metal >= 0.5,
        feature_height=0.8 - dishing,
        feature_material=metal_map,
        top_height=0.8,
        pixel_nm=_pixel_nm(rng, size),
        across=u,
        along=v,
        gaps=bounds[: 2 * ((len(bounds)) // 2)].astype(np.float64),
        gap_halfwidth_max=size / 2,
        meta={
            "family": "metal_cmp",
            "pitch_px": round(float(np.median(widths + spaces)), 3),
            "cd_px": round(metal_cd, 3),
            "orientation_deg": round(base + rot, 3),
            "material": name,
            "grain_px": round(grain, 3),
        },
    )
