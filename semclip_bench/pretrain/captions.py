"""Captions for generated SEM images, written from :class:`SynthImage.meta` in many phrasings.

A caption names the pattern family, pitch/CD, orientation and material, some imaging conditions
and, for a defect image, its type, size and rough location ("near the top left"); a normal image
gets a normal caption. Each caption is drawn from a random generator so that the same meta gives
many different sentences (templates, synonyms, attribute order, optional attributes).

Held-out protocol: the defect types in :data:`EXCLUDED_TYPES` (``scratch``, ``infilm``) never
appear in pretraining. :func:`check_caption` rejects any caption that names them, and
:func:`caption_from_meta` refuses their meta.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Defect types kept out of pretraining (images and captions), reported as "unseen".
EXCLUDED_TYPES: tuple[str, ...] = ("scratch", "infilm")
#: Defect types used in pretraining, reported as "seen".
SEEN_TYPES: tuple[str, ...] = ("bridge", "copper_residue", "hole", "particle")

#: Words that would leak an excluded type into a caption (matched case-insensitively).
_FORBIDDEN = re.compile(r"scratch|in[\s_-]?film|groove|buried|embedded|bulge|bump", re.IGNORECASE)

_DEFECT_NOUNS: dict[str, tuple[str, ...]] = {
    "bridge": (
        "a bridge between adjacent lines",
        "a bridging defect",
        "a short between neighbouring features",
        "a bridge that joins two features",
        "a bridge defect",
        "merged neighbouring features",
    ),
    "copper_residue": (
        "copper residue",
        "leftover copper",
        "a residual copper patch",
        "unremoved copper on the dielectric",
        "metal residue left after polishing",
        "a copper residue stain",
    ),
    "hole": (
        "a hole",
        "a void",
        "a missing pattern region",
        "a dark pit",
        "a pinhole",
        "a hole defect",
    ),
    "particle": (
        "a particle",
        "a foreign particle",
        "a bright particle",
        "a contamination particle",
        "a speck of debris",
        "a particle defect",
    ),
}

_NORMAL_PHRASES: tuple[str, ...] = (
    "no defects",
    "no visible defect",
    "a defect-free pattern",
    "a clean, regular pattern",
    "a normal pattern",
    "nominal structures with no anomalies",
    "a good, defect-free area",
    "a uniform pattern without anomalies",
)

_FAMILY_NOUNS: dict[str, tuple[str, ...]] = {
    "line_space": ("lines and spaces", "line/space pattern", "dense lines", "line array"),
    "contact_array": ("contact hole array", "array of contacts", "contact holes", "vias"),
    "metal_cmp": (
        "polished metal lines",
        "metal layer after CMP",
        "damascene metal lines",
        "CMP-polished interconnect",
    ),
}

_SIZE_WORDS = (("tiny", 0.035), ("small", 0.07), ("medium-sized", 0.13), ("large", 10.0))


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def check_caption(text: str) -> str:
    """Return ``text``; raise ValueError if it names an excluded (held-out) defect type."""
    if _FORBIDDEN.search(text):
        raise ValueError(f"caption names a held-out defect type: {text!r}")
    return text


def orientation_word(degrees: float) -> str:
    """'vertical' (lines along y, 0 deg), 'horizontal' (90 deg) or 'diagonal'."""
    d = float(degrees) % 180.0
    if d < 20.0 or d > 160.0:
        return "vertical"
    if 70.0 < d < 110.0:
        return "horizontal"
    return "diagonal"


def location_phrase(centroid_yx: tuple[float, float], size: int, rng: np.random.Generator) -> str:
    """Rough location in a 3x3 grid: 'near the top left', 'in the centre', ..."""
    y, x = (float(c) / max(size, 1) for c in centroid_yx)
    row = "top" if y < 1 / 3 else ("bottom" if y > 2 / 3 else "middle")
    col = "left" if x < 1 / 3 else ("right" if x > 2 / 3 else "centre")
    if row == "middle" and col == "centre":
        return _pick(rng, ("in the centre", "near the centre", "in the middle of the image"))
    if row == "middle":
        return _pick(rng, (f"on the {col} side", f"near the {col} edge", f"at the middle {col}"))
    if col == "centre":
        return _pick(rng, (f"near the {row}", f"at the {row} centre", f"in the {row} middle"))
    return _pick(rng, (f"near the {row} {col}", f"in the {row} {col} corner", f"at {row} {col}"))


def _material(meta: Mapping[str, Any]) -> str:
    return str(meta.get("material", "")).replace("_", " ")


def _pattern_phrase(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    family = str(meta.get("family", meta.get("category", "")))
    noun = _pick(rng, _FAMILY_NOUNS.get(family, ("a patterned layer",)))
    pitch, cd = float(meta.get("pitch_nm", 0.0)), float(meta.get("cd_nm", 0.0))
    material = _material(meta)
    details: list[str] = []
    if pitch > 0 and rng.random() < 0.8:
        details.append(_pick(rng, (f"{pitch:.0f} nm pitch", f"pitch {pitch:.0f} nm")))
    if cd > 0 and rng.random() < 0.6:
        what = "diameter" if family == "contact_array" else "CD"
        details.append(_pick(rng, (f"{cd:.0f} nm {what}", f"{what} {cd:.0f} nm")))
    if family in ("line_space", "metal_cmp") and rng.random() < 0.75:
        noun = f"{orientation_word(meta.get('orientation_deg', 0.0))} {noun}"
    if family == "contact_array" and meta.get("staggered") and rng.random() < 0.7:
        noun = f"staggered {noun}"
    if material and rng.random() < 0.75:
        noun = _pick(rng, (f"{noun} in {material}", f"{material} {noun}", f"{noun} ({material})"))
    if details:
        rng.shuffle(details)
        noun = (
            f"{noun}, " + ", ".join(details)
            if rng.random() < 0.5
            else f"{noun} at " + (" and ".join(details))
        )
    return noun


def _imaging_phrase(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    parts: list[str] = []
    kv = meta.get("kv")
    if kv is not None and rng.random() < 0.6:
        parts.append(_pick(rng, (f"{float(kv):g} kV", f"at {float(kv):g} kV beam energy")))
    mag = meta.get("magnification")
    if mag is not None and rng.random() < 0.5:
        parts.append(
            _pick(rng, (f"{float(mag) / 1000:.0f}k x", f"magnification {float(mag):.0f}x"))
        )
    det = meta.get("detector")
    if det and rng.random() < 0.4:
        parts.append(_pick(rng, (f"{det} detector", f"{det} signal")))
    px = meta.get("pixel_size_nm")
    if px is not None and rng.random() < 0.4:
        parts.append(f"{float(px):.1f} nm pixels")
    dose = meta.get("dose")
    if dose is not None and rng.random() < 0.5:
        if float(dose) < 60:
            parts.append(_pick(rng, ("noisy low-dose scan", "low dose, grainy")))
        elif float(dose) > 150:
            parts.append(_pick(rng, ("high-dose, low-noise scan", "clean high-dose frame")))
    rng.shuffle(parts)
    return ", ".join(parts)


def _defect_phrase(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    kind = str(meta["defect_type"])
    noun = _pick(rng, _DEFECT_NOUNS[kind])
    countable = noun.startswith(("a ", "an "))
    if countable:
        noun = noun.split(" ", 1)[1]
    size_px, size = meta.get("size_px"), int(meta.get("image_size", 256))
    if size_px and rng.random() < 0.8:
        rel = float(size_px) / max(size, 1)
        word = next(w for w, limit in _SIZE_WORDS if rel < limit)
        nm = float(size_px) * float(meta.get("pixel_size_nm", 0.0))
        if nm > 0 and rng.random() < 0.5:
            noun = _pick(rng, (f"{noun} of about {nm:.0f} nm", f"{word} {noun} (~{nm:.0f} nm)"))
        else:
            noun = f"{word} {noun}"
    if countable:
        noun = f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    if meta.get("hard") and rng.random() < 0.6:
        noun = f"{noun}, {_pick(rng, ('faint', 'low contrast', 'subtle'))}"
    centroid = meta.get("centroid_yx")
    if centroid is not None and rng.random() < 0.8:
        noun = f"{noun} {location_phrase(centroid, size, rng)}"
    return noun


_DEFECT_TEMPLATES = (
    "SEM image of {pattern} with {defect}.",
    "A SEM image of {pattern}; {defect}. {imaging}",
    "{defect} on {pattern}, {imaging}",
    "defect: {defect}. pattern: {pattern}. {imaging}",
    "scanning electron micrograph, {imaging}: {pattern} showing {defect}",
    "{pattern} with {defect}",
    "review SEM of {pattern}, {defect} found",
    "{imaging} SEM of {pattern}: {defect}",
    "wafer inspection image, {pattern}, defect = {defect}",
    "{defect} in an image of {pattern}",
    "SEM image of {defect} on wafer surface; {pattern}",
    "a grayscale SEM micrograph showing {defect} on {pattern}",
)

_NORMAL_TEMPLATES = (
    "SEM image of {pattern}, {normal}.",
    "A SEM image of {pattern}; {normal}. {imaging}",
    "{normal}: {pattern}, {imaging}",
    "defect: none. pattern: {pattern}. {imaging}",
    "scanning electron micrograph, {imaging}: {pattern} with {normal}",
    "{pattern}, {normal}",
    "review SEM of {pattern}, {normal}",
    "{imaging} SEM of {pattern}: {normal}",
    "wafer inspection image, {pattern}, {normal}",
    "{normal} in an image of {pattern}",
    "SEM image of {normal} on wafer surface; {pattern}",
    "a grayscale SEM micrograph showing {normal}: {pattern}",
)


def caption_from_meta(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    """One caption of a generated image (its ``SynthImage.meta``), phrasing drawn from ``rng``.

    Raises ValueError for an excluded defect type (the held-out protocol).
    """
    kind = meta.get("defect_type")
    if kind in EXCLUDED_TYPES or meta.get("label") in EXCLUDED_TYPES:
        raise ValueError(f"defect type {kind or meta.get('label')!r} is held out of pretraining")
    pattern = _pattern_phrase(meta, rng)
    imaging = _imaging_phrase(meta, rng) if rng.random() < 0.7 else ""
    if kind:
        template = _pick(rng, _DEFECT_TEMPLATES)
        text = template.format(pattern=pattern, defect=_defect_phrase(meta, rng), imaging=imaging)
    else:
        template = _pick(rng, _NORMAL_TEMPLATES)
        text = template.format(pattern=pattern, normal=_pick(rng, _NORMAL_PHRASES), imaging=imaging)
    text = re.sub(r"\s+", " ", text).strip(" ,;:.")
    text = re.sub(r"\s+([,.;:])", r"\1", re.sub(r"([,;:])\s*[,;:.]", r"\1", text))
    return check_caption(text[0].upper() + text[1:] if rng.random() < 0.5 else text)


__all__ = [
    "EXCLUDED_TYPES",
    "SEEN_TYPES",
    "caption_from_meta",
    "check_caption",
    "location_phrase",
    "orientation_word",
]
