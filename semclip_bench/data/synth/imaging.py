"""SEM image formation from a scene, and the tool's text data bar.

Signal model (secondary electrons, top-down CD-SEM): yield of the surface material, plus edge
brightening that grows with the local surface slope (more electrons escape near edges) and a
diffuse halo around it, plus directional shading from the side detector; then Gaussian beam
blur, slow multiplicative charging/drift fields, shot noise at the electron dose, scan-line
(row) offset and gain noise, brightness/contrast of the amplifier, and quantisation.

Shot noise is Poisson(dose * signal) / dose, drawn with the normal approximation
``signal + sqrt(signal / dose) * z`` (z standard normal, slightly correlated along the scan
line). The normal draw uses the same random numbers whatever the signal, so a defect changes
only the pixels it covers: the same image without its defect is identical elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from semclip_bench.data.synth.fields import log_uniform, smooth_noise, white_noise
from semclip_bench.data.synth.font import GLYPH_ROWS, draw_text, text_width
from semclip_bench.data.synth.raster import f32, gaussian_blur, sobel

#: Reference display width used by SEM vendors to state magnification (Polaroid 4x5 inch).
_DISPLAY_WIDTH_MM = 127.0


@dataclass(frozen=True)
class Imaging:
    """Tool settings and nuisance parameters of one acquisition."""

    kv: float
    working_distance_mm: float
    magnification: float
    dose: float
    blur_sigma: float
    edge_gain: float
    halo_gain: float
    shading_gain: float
    detector_azimuth: float
    databar: bool
    databar_rows: int
    bar_style: int
    detector: str

    def meta(self) -> dict[str, object]:
        return {
            "kv": self.kv,
            "magnification": round(self.magnification, 1),
            "working_distance_mm": self.working_distance_mm,
            "dose": round(self.dose, 3),
            "beam_blur_px": round(self.blur_sigma, 3),
            "detector": self.detector,
            "databar": self.databar,
            "databar_rows": self.databar_rows,
        }


def sample_imaging(
    rng: np.random.Generator,
    size: int,
    pixel_nm: float,
    dose_range: tuple[float, float],
    databar_fraction: float,
    databar_height: float,
) -> Imaging:
    """Draw the tool settings of one image (always the same number of draws)."""
    s = size / 256.0
    kv = float(rng.choice([0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0]))
    wd = round(float(rng.uniform(2.0, 8.0)), 1)
    fov_mm = pixel_nm * size * 1e-6
    dose = log_uniform(rng, *dose_range) if dose_range[1] > dose_range[0] else dose_range[0]
    # Lower landing energy = larger probe; blur is given in pixels of a 256 px scan.
    blur = float(rng.uniform(0.45, 1.0)) * (1.0 + 0.25 / kv) * max(s, 0.5)
    databar = bool(rng.random() < databar_fraction)
    rows = max(round(databar_height * size), 6) if databar else 0
    return Imaging(
        kv=kv,
        working_distance_mm=wd,
        magnification=_DISPLAY_WIDTH_MM / fov_mm,
        dose=dose,
        blur_sigma=blur,
        edge_gain=float(rng.uniform(0.5, 0.9)),
        halo_gain=float(rng.uniform(0.1, 0.35)),
        shading_gain=float(rng.uniform(0.0, 0.18)),
        detector_azimuth=float(rng.uniform(0.0, 2 * np.pi)),
        databar=databar,
        databar_rows=rows,
        bar_style=int(rng.integers(3)),
        detector=str(rng.choice(["SE", "SE(U)", "SE(L)", "InLens"])),
    )


def form_image(
    height: np.ndarray,
    material: np.ndarray,
    imaging: Imaging,
    rng: np.random.Generator,
    bright_yield: float = 0.6,
) -> np.ndarray:
    """Float32 image in [0, 1] of the scene (no data bar). Draw order never depends on content.

    ``bright_yield`` (a high percentile of the defect-free scene's yield) caps the amplifier
    gain, as a tool's auto brightness/contrast does before capture, so bright patterns and
    their edges rarely clip; it comes from the clean scene, so a defect never changes it.
    """
    size = height.shape[0]
    s = size / 256.0
    # Nuisance fields first, so the random stream does not depend on the scene.
    ramp_dir = rng.uniform(0, 2 * np.pi)
    ramp_amp = rng.uniform(0.0, 0.25)
    charge_amp = rng.uniform(0.0, 0.08)
    charge = smooth_noise(rng, size, size / 3)
    top_amp = rng.uniform(0.0, 0.12) if rng.random() < 0.4 else 0.0
    top_len = rng.uniform(0.03, 0.12) * size
    drift = rng.uniform(-0.1, 0.1)
    black = rng.uniform(-0.02, 0.1)
    gain = rng.uniform(0.7, 1.0)
    row_sigma = rng.uniform(0.0, 0.035)
    row_gain_sigma = rng.uniform(0.0, 0.03)
    scan_corr = rng.uniform(0.0, 0.6)
    row_off = rng.standard_normal(size).astype(np.float32) * np.float32(row_sigma)
    row_gain = rng.standard_normal(size).astype(np.float32) * np.float32(row_gain_sigma)
    z = white_noise(rng, size)

    # Topographic contrast: slope-dependent edge brightening, halo and detector shading.
    gx = sobel(height, axis=1)
    gy = sobel(height, axis=0)
    slope = np.minimum(np.sqrt(gx * gx + gy * gy), 1.4)
    halo = gaussian_blur(slope, 1.6 * max(s, 0.5))
    az = imaging.detector_azimuth
    shade = gx * np.float32(math.cos(az)) + gy * np.float32(math.sin(az))
    signal = (
        material
        + np.float32(imaging.edge_gain) * slope
        + np.float32(imaging.halo_gain) * halo
        + np.float32(imaging.shading_gain) * shade
    )
    signal = gaussian_blur(signal, imaging.blur_sigma)

    # Slow fields: charging ramp and blotches, bright first scan lines, brightness drift.
    axis = np.arange(size, dtype=np.float32) / np.float32(size)
    col_term = np.float32(ramp_amp * math.cos(ramp_dir)) * axis
    row_term = np.float32(ramp_amp * math.sin(ramp_dir)) * axis + np.float32(drift) * (axis - 0.5)
    field = np.float32(charge_amp) * charge
    field += col_term[None, :]
    field += (1.0 + row_term)[:, None]
    signal = signal * field
    if top_amp > 0:
        top = np.float32(top_amp) * f32(np.exp, -axis * np.float32(size / top_len))
        signal += top[:, None]
    np.maximum(signal, 0.0, out=signal)

    # Shot noise at the dose, correlated a little along the fast scan direction.
    z[:, 1:] += np.float32(scan_corr) * z[:, :-1]
    z *= np.float32(1.0 / np.sqrt(1 + scan_corr**2))
    noisy = signal + np.sqrt(signal / np.float32(imaging.dose)) * z
    noisy = noisy * (1.0 + row_gain[:, None]) + row_off[:, None]
    gain = min(gain, (0.97 - black) / (bright_yield + 0.6 * imaging.edge_gain + 0.1))
    out = np.float32(black) + np.float32(gain) * noisy
    return np.clip(out, 0.0, 1.0)


def quantise(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0, 1] float to uint8 or uint16 with rounding."""
    top = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return (image * np.float32(top) + np.float32(0.5)).astype(dtype)


def _scale_bar_nm(fov_nm: float) -> int:
    target = 0.2 * fov_nm
    nice = [m * 10**e for e in range(0, 6) for m in (1, 2, 5)]
    return int(min(nice, key=lambda n: abs(math.log(n / target))))


def _format_length(nm: int) -> str:
    return f"{nm // 1000}um" if nm >= 1000 and nm % 1000 == 0 else f"{nm}nm"


def draw_databar(image: np.ndarray, imaging: Imaging, pixel_nm: float) -> None:
    """Write the tool's data bar (settings text and a scale bar) over the bottom rows, in place."""
    rows = imaging.databar_rows
    size = image.shape[1]
    if rows <= 0:
        return
    bg, fg = ((0, 255), (0, 255), (40, 230))[imaging.bar_style]
    bar = np.full((rows, size), bg, np.uint8)
    mag = imaging.magnification
    mag_text = f"x{mag / 1000:.1f}k" if mag >= 1000 else f"x{mag:.0f}"
    if imaging.bar_style == 1:
        text = (
            f"EHT={imaging.kv:.2f}kV WD={imaging.working_distance_mm:.1f}mm Mag={mag / 1000:.0f}KX"
        )
    else:
        text = (
            f"{imaging.kv:.1f}kV {imaging.working_distance_mm:.1f}mm {mag_text} {imaging.detector}"
        )
    bar_nm = _scale_bar_nm(pixel_nm * size)
    bar_px = max(round(bar_nm / pixel_nm), 2)
    label = _format_length(bar_nm)
    # Font pixels: glyphs half the bar's height; the settings text shrinks to fit beside the
    # scale bar and its label.
    pixel = rows * 0.5 / GLYPH_ROWS
    label_w = text_width(label, pixel)
    text_room = max(size - bar_px - label_w - 12, 8)
    text_w = text_width(text, pixel)
    t_pixel = pixel * min(1.0, text_room / max(text_w, 1))
    base_y = int(rows * 0.7)
    draw_text(bar, text, 2, base_y, t_pixel, fg)
    x1 = size - 3
    x0 = x1 - bar_px
    yb = int(rows * 0.72)
    thick = max(rows // 10, 1)
    top = max(yb - thick // 2, 0)
    bar[top : top + thick, max(x0, 0) : x1 + 1] = fg
    tick = max(rows // 5, 1)
    for x in (x0, x1):
        if 0 <= x < size:
            bar[max(yb - tick, 0) : yb + 1, x] = fg
    draw_text(bar, label, int(np.floor(x0 - label_w - 3)), base_y, pixel, fg)
    if image.dtype == np.uint16:
        image[-rows:] = bar.astype(np.uint16) * 257
    else:
        image[-rows:] = bar
