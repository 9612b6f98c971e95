"""Captions for generated SEM images, written from :class:`SynthImage.meta` in varied plain English.

Method-neutral vocabulary: a caption describes the image with the field's domain terms (pattern
family, pitch/CD, orientation, material, defect type names, size, location, imaging conditions)
*and* with the generic normal / anomalous vocabulary of anomaly detection (normal: flawless,
perfect, unblemished, intact, clean, good, without flaw / defect / damage ...; anomalous:
damaged, flaw, defect, broken, anomaly, abnormal ...), so that no evaluated method's prompt
wording is favoured by the backbone's pretraining. Captions never copy a shipped prompt bank's
sentence, template or multi-word state phrase verbatim: :func:`caption_from_meta` redraws a
caption that would (:func:`semclip_bench.pretrain.vocabulary.copies_prompt_bank`), and the tests
sample many captions to check both the word coverage and the absence of verbatim copies.

Each caption is drawn from a random generator (sentence frame, synonyms, attribute order,
optional attributes), so the same meta gives many different sentences.

Held-out protocol: the defect types in :data:`EXCLUDED_TYPES` (``scratch``, ``infilm``) never
appear in pretraining. :func:`check_caption` rejects any caption that names them, and
:func:`caption_from_meta` refuses their meta.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from semclip_bench.data.labels import EXCLUDED_TYPES, SEEN_TYPES
from semclip_bench.pretrain.vocabulary import HELD_OUT_WORDS, copies_prompt_bank

# ---------------------------------------------------------------------------------- vocabulary
#: Normal-state adjectives (in front of the pattern noun).
_NORMAL_ADJ: tuple[str, ...] = (
    "flawless", "perfect", "unblemished", "intact", "clean", "good", "normal", "regular",
    "uniform", "pristine", "defect-free", "undamaged", "well-defined", "nominal",
)  # fmt: skip
#: Normal-state phrases after the pattern noun ("vertical lines <phrase>").
_NORMAL_POST: tuple[str, ...] = (
    "without flaw", "without flaws", "without defect", "without defects", "without damage",
    "without any anomaly", "without particles or other defects", "with no defect",
    "with no damage", "with no visible flaw", "free of defects", "free of damage",
    "in good condition", "with nothing out of place", "intact and as designed", "all good",
)  # fmt: skip
#: Normal verdicts (a clause of their own).
_NORMAL_VERDICT: tuple[str, ...] = (
    "no defect found", "no flaw visible", "no damage", "nothing unusual", "no anomaly",
    "the pattern is intact", "everything looks good", "a good sample", "passes inspection",
    "clean and regular", "the structures are perfect", "normal, defect-free", "verdict: good",
    "status: normal", "flawless", "undamaged", "uniform and unblemished", "good",
)  # fmt: skip
#: Anomalous-state adjectives (in front of the pattern noun).
_ANOMALOUS_ADJ: tuple[str, ...] = (
    "damaged", "defective", "flawed", "broken", "abnormal", "anomalous", "faulty", "imperfect",
)  # fmt: skip
#: Anomalous-state phrases after the pattern noun; "{d}" is the defect noun phrase.
_ANOMALOUS_POST: tuple[str, ...] = (
    "with a defect, {d}", "with defect: {d}", "with a flaw, {d}", "with flaw: {d}",
    "with damage, {d}", "with damage ({d})", "with an anomaly, {d}", "showing {d}",
    "broken by {d}", "damaged by {d}", "with an abnormal spot, {d}",
)  # fmt: skip
#: Anomalous verdicts (a clause of their own); "{t}" is the bare defect type name.
_ANOMALOUS_VERDICT: tuple[str, ...] = (
    "defect found: {t}", "a flaw is visible", "damage found", "abnormal region", "an anomaly",
    "the pattern is broken", "fails inspection ({t})", "verdict: defective, {t}",
    "status: abnormal", "anomaly detected", "a damaged spot", "rejected: {t}",
    "defect class: {t}", "damaged ({t})", "defective",
)  # fmt: skip
#: Clauses with no state word at all, for the defect frames that name only the type.
_PLAIN_LINKS: tuple[str, ...] = ("with {d}", "and {d}", "; {d}", ", {d}")

#: Names of each seen defect type; the first (the bare type name) is drawn half of the time.
_TYPE_NAMES: dict[str, tuple[str, ...]] = {
    "bridge": ("bridge", "bridging defect", "bridge defect", "short", "line bridge"),
    "copper_residue": (
        "copper residue",
        "Cu residue",
        "residual copper",
        "leftover copper",
        "metal residue",
    ),
    "hole": ("hole", "void", "pinhole", "pit", "hole defect", "missing-pattern spot"),
    "particle": ("particle", "foreign particle", "particle defect", "speck of debris"),
}
#: Names used without an article (mass nouns).
_MASS_NOUNS = frozenset(_TYPE_NAMES["copper_residue"])
#: What each seen defect type looks like, appended to its name ("{f}": the family's features).
#: A leading comma makes an apposition, otherwise the text follows the name directly.
_TYPE_DETAILS: dict[str, tuple[str, ...]] = {
    "bridge": (
        " joining two adjacent {f}",
        " that shorts neighbouring {f}",
        ", an unwanted connection",
        " where two {f} are merged",
        " linking two patterns",
        " between two neighbouring {f}",
    ),
    "copper_residue": (
        " left after chemical mechanical polishing",
        " unremoved after CMP",
        ", a grainy stain",
        ", a bright patchy film on the dielectric",
        " left by incomplete polishing",
        ", a stain over the dielectric",
    ),
    "hole": (
        ", a dark missing region",
        " where the film is missing",
        ", a dark spot in the film",
        ", missing material",
        ", an opening through the layer",
        ", dark and sharp-edged",
    ),
    "particle": (
        ", bright and round",
        " from contamination",
        " with a dark shadow",
        ", a foreign body",
        " sitting on the surface",
        ", a bright speck of contamination",
    ),
}

#: Pattern-family nouns.
_FAMILY_NOUNS: dict[str, tuple[str, ...]] = {
    "line_space": (
        "lines",
        "line and space pattern",
        "line/space array",
        "dense lines",
        "line array",
        "lines and spaces",
    ),
    "contact_array": (
        "contact hole array",
        "array of contacts",
        "contact holes",
        "vias",
        "contact array",
        "via array",
    ),
    "metal_cmp": (
        "polished metal lines",
        "metal layer after CMP",
        "damascene metal lines",
        "polished interconnect layer",
        "metal interconnect lines",
        "CMP metal layer",
    ),
}
#: Plural word for a family's features (in bridge details).
_FAMILY_FEATURES = {"line_space": "lines", "contact_array": "contacts", "metal_cmp": "metal lines"}
#: Generic words for the imaged thing ("<word>: <pattern>").
_OBJECT_WORDS: tuple[str, ...] = (
    "object", "structure", "sample", "die", "wafer", "semiconductor device", "patterned wafer",
)  # fmt: skip
#: Names of the image itself (without article).
_VIEWS: tuple[str, ...] = (
    "SEM image", "SEM micrograph", "scanning electron microscope image", "electron micrograph",
    "SEM photo", "top-down SEM image", "review SEM image", "CD-SEM image", "grayscale SEM image",
    "close-up SEM view", "inspection image", "cropped SEM frame", "electron microscope photo",
)  # fmt: skip
#: Where the image comes from.
_CONTEXTS: tuple[str, ...] = (
    "from a patterned wafer", "taken for visual inspection", "recorded for anomaly detection",
    "of a semiconductor device", "from a 12-inch wafer", "from wafer inspection",
    "during defect review", "from an inspection tool",
)  # fmt: skip

#: Most imaging details in one caption (keeps captions inside the 77-token context).
_MAX_IMAGING_PARTS = 3
_SIZE_WORDS = (("tiny", 0.035), ("small", 0.07), ("medium-sized", 0.13), ("large", 10.0))
#: "an" before a vowel sound: vowels except "uni"/"use"; acronyms read letter by letter.
_AN = re.compile(r"^(?:[aeio]|u(?!ni|s[eu])|[FHLMNRSX][A-Z])")
#: Fraction of normal captions with no state word (WinCLIP's bare "{}" normal state).
PLAIN_NORMAL_FRACTION = 0.12
#: Fraction of defect captions with the type only / a generic anomaly word only.
TYPE_ONLY_FRACTION = 0.1
GENERIC_ONLY_FRACTION = 0.1


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front."""
    return f"{'an' if _AN.match(phrase) else 'a'} {phrase}"


def check_caption(text: str) -> str:
    """Return ``text``; raise ValueError if it names an excluded (held-out) defect type."""
    if HELD_OUT_WORDS.search(text):
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


# ------------------------------------------------------------------------------------ phrases
def _material(meta: Mapping[str, Any]) -> str:
    return str(meta.get("material", "")).replace("_", " ")


def _family(meta: Mapping[str, Any]) -> str:
    return str(meta.get("family", meta.get("category", "")))


def _contrast_phrase(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    """Bright / dark look of the pattern, from the family and material."""
    if _family(meta) == "contact_array":
        if "tungsten" in _material(meta):
            return _pick(rng, ("bright plugs in a darker oxide", "bright contacts"))
        return _pick(rng, ("dark holes in a bright film", "dark contacts, bright background"))
    return _pick(rng, ("bright lines on a dark background", "bright features, dark spaces"))


def _pattern_phrase(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    """Noun phrase of the pattern: family noun with orientation, material, pitch and CD."""
    family = _family(meta)
    noun = _pick(rng, _FAMILY_NOUNS.get(family, ("patterned layer",)))
    pitch, cd = float(meta.get("pitch_nm", 0.0)), float(meta.get("cd_nm", 0.0))
    material = _material(meta)
    details: list[str] = []
    if pitch > 0 and rng.random() < 0.6:
        details.append(_pick(rng, (f"{pitch:.0f} nm pitch", f"pitch {pitch:.0f} nm")))
    if cd > 0 and rng.random() < 0.4:
        what = "diameter" if family == "contact_array" else "CD"
        details.append(_pick(rng, (f"{cd:.0f} nm {what}", f"{what} {cd:.0f} nm")))
    if family in ("line_space", "metal_cmp") and rng.random() < 0.7:
        noun = f"{orientation_word(meta.get('orientation_deg', 0.0))} {noun}"
    if family == "contact_array" and meta.get("staggered") and rng.random() < 0.7:
        noun = f"staggered {noun}"
    if material and rng.random() < 0.6:
        noun = _pick(rng, (f"{noun} in {material}", f"{material} {noun}", f"{noun} ({material})"))
    if details:
        rng.shuffle(details)
        joined = ", ".join(details) if rng.random() < 0.5 else " and ".join(details)
        noun = f"{noun}, {joined}" if rng.random() < 0.5 else f"{noun} at {joined}"
    return noun


def _imaging_phrase(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    """Comma-separated imaging details (beam, magnification, detector, noise, blur, contrast)."""
    parts: list[str] = []
    kv = meta.get("kv")
    if kv is not None and rng.random() < 0.4:
        parts.append(_pick(rng, (f"{float(kv):g} kV", f"{float(kv):g} kV beam")))
    mag = meta.get("magnification")
    if mag is not None and rng.random() < 0.3:
        parts.append(
            _pick(rng, (f"{float(mag) / 1000:.0f}k x", f"magnification {float(mag):.0f}x"))
        )
    det = meta.get("detector")
    if det and rng.random() < 0.25:
        parts.append(_pick(rng, (f"{det} detector", f"{det} signal")))
    px = meta.get("pixel_size_nm")
    if px is not None and rng.random() < 0.25:
        parts.append(f"{float(px):.1f} nm pixels")
    dose = meta.get("dose")
    if dose is not None and rng.random() < 0.4:
        if float(dose) < 60:
            parts.append(_pick(rng, ("noisy low-dose scan", "grainy", "corrupted by shot noise")))
        elif float(dose) > 150:
            parts.append(_pick(rng, ("low-noise high-dose scan", "high-dose frame")))
    blur = meta.get("beam_blur_px")
    if blur is not None and rng.random() < 0.3:
        blur = float(blur) * 256 / max(int(meta.get("image_size", 256)), 1)  # at 256 px
        if blur > 1.0:
            parts.append(_pick(rng, ("slightly blurry", "soft focus", "blurry edges")))
        elif blur < 0.7:
            parts.append(_pick(rng, ("sharp focus", "crisp edges")))
    if rng.random() < 0.2:
        parts.append(_contrast_phrase(meta, rng))
    if meta.get("databar") is not None and rng.random() < 0.15:
        parts.append("data bar along the bottom" if meta.get("databar") else "cropped frame")
    rng.shuffle(parts)
    return ", ".join(parts[:_MAX_IMAGING_PARTS])


def _type_name(kind: str, rng: np.random.Generator) -> str:
    """A name of the defect type: the bare type name half of the time, else a synonym."""
    names = _TYPE_NAMES[kind]
    return names[0] if rng.random() < 0.5 else _pick(rng, names)


def _defect_phrase(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    """Noun phrase of the defect: [article] [faint] [size] name [detail] [location]."""
    kind = str(meta["defect_type"])
    name = _type_name(kind, rng)
    noun = name
    size_px, size = meta.get("size_px"), int(meta.get("image_size", 256))
    if size_px and rng.random() < 0.7:
        rel = float(size_px) / max(size, 1)
        word = next(w for w, limit in _SIZE_WORDS if rel < limit)
        nm = float(size_px) * float(meta.get("pixel_size_nm", 0.0))
        if nm > 0 and rng.random() < 0.4:
            noun = _pick(rng, (f"{noun} of about {nm:.0f} nm", f"{word} {noun} (~{nm:.0f} nm)"))
        else:
            noun = f"{word} {noun}"
    if meta.get("hard") and rng.random() < 0.6:
        noun = f"{_pick(rng, ('faint', 'low-contrast', 'subtle', 'barely visible'))} {noun}"
    if name not in _MASS_NOUNS:
        noun = _article(noun)
    if rng.random() < 0.5:
        feature = _FAMILY_FEATURES.get(_family(meta), "features")
        noun += _pick(rng, _TYPE_DETAILS[kind]).format(f=feature)
    centroid = meta.get("centroid_yx")
    if centroid is not None and rng.random() < 0.75:
        noun = f"{noun} {location_phrase(centroid, size, rng)}"
    return noun


def _tail(*parts: str) -> str:
    """Non-empty ``parts`` joined by ", " with a leading ", " (or "")."""
    kept = [p for p in parts if p]
    return ", " + ", ".join(kept) if kept else ""


def _normal_caption(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    subj, view, img = _pattern_phrase(meta, rng), _pick(rng, _VIEWS), ""
    if rng.random() < 0.6:
        img = _imaging_phrase(meta, rng)
    ctx = _pick(rng, _CONTEXTS) if rng.random() < 0.3 else ""
    if rng.random() < PLAIN_NORMAL_FRACTION:  # no state word: a plain description
        if rng.random() < 0.5:
            return f"{_article(view)} of {subj}{_tail(ctx, img)}"
        return f"{subj}{_tail(view, ctx, img)}"
    adj, post, verdict = (
        _pick(rng, _NORMAL_ADJ),
        _pick(rng, _NORMAL_POST),
        _pick(rng, _NORMAL_VERDICT),
    )
    frame = int(rng.integers(7))
    if frame == 0:
        return f"{_article(view)} of {adj} {subj}{_tail(ctx, img)}"
    if frame == 1:
        return f"{adj} {subj}{_tail(view, ctx, img)}"
    if frame == 2:
        return f"{subj} {post}. {view}{_tail(img)}"
    if frame == 3:
        return f"{_article(view)} {ctx or _pick(rng, _CONTEXTS)}: {subj}. {verdict}{_tail(img)}"
    if frame == 4:
        return f"{verdict}: {subj} ({view}{_tail(img)})"
    if frame == 5:
        obj = _pick(rng, _OBJECT_WORDS)
        return f"inspection result: {verdict}. {obj}: {subj}{_tail(img)}"
    obj = _pick(rng, _OBJECT_WORDS[1:])  # "flawless object" would be a WinCLIP state verbatim
    return f"{adj} {obj}: {subj} {post}, {view}{_tail(img)}"


def _defect_caption(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    kind = str(meta["defect_type"])
    subj, view, img = _pattern_phrase(meta, rng), _pick(rng, _VIEWS), ""
    if rng.random() < 0.6:
        img = _imaging_phrase(meta, rng)
    ctx = _pick(rng, _CONTEXTS) if rng.random() < 0.3 else ""
    d = _defect_phrase(meta, rng)
    bare = kind.replace("_", " ")
    adj = _pick(rng, _ANOMALOUS_ADJ)
    verdict = _pick(rng, _ANOMALOUS_VERDICT).format(t=bare)
    u = rng.random()
    if u < TYPE_ONLY_FRACTION:  # the defect named, no generic anomaly word
        link = _pick(rng, _PLAIN_LINKS).format(d=d)
        sep = "" if link[0] in ",;" else " "
        return f"{_article(view)} of {subj}{sep}{link}{_tail(img)}"
    if u < TYPE_ONLY_FRACTION + GENERIC_ONLY_FRACTION:  # generic anomaly words, no type name
        loc = meta.get("centroid_yx")
        where = location_phrase(loc, int(meta.get("image_size", 256)), rng) if loc else ""
        if rng.random() < 0.5:
            return f"{_article(view)} of {adj} {subj}{_tail(where, img)}"
        return f"{subj}: {_pick(rng, ('an anomaly', 'a flaw', 'damage', 'a defect'))} {where}"
    frame = int(rng.integers(6))
    if frame == 0:
        return f"{_article(view)} of {adj} {subj}: {d}{_tail(img)}"
    if frame == 1:
        return f"{subj} {_pick(rng, _ANOMALOUS_POST).format(d=d)}. {view}{_tail(ctx, img)}"
    if frame == 2:
        return f"{d} on {subj}. {verdict}{_tail(img)}"
    if frame == 3:
        obj = _pick(rng, _OBJECT_WORDS)
        return f"inspection result: {verdict}. {obj}: {subj}; {d}{_tail(img)}"
    if frame == 4:
        return f"{adj} {subj} ({view}{_tail(img)}): {d}"
    return f"{_article(view)} {ctx or _pick(rng, _CONTEXTS)}: {d}, {verdict}; {subj}"


def _tidy(text: str, rng: np.random.Generator) -> str:
    """Collapse spaces and stray punctuation; capitalise the first letter half of the time."""
    text = re.sub(r"\s+", " ", text).strip(" ,;:.")
    text = re.sub(r"\s+([,.;:)])", r"\1", re.sub(r"([,;:])\s*[,;:.]", r"\1", text))
    text = re.sub(r"\(\s+", "(", text)
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


#: Attempts before giving up when drawn captions keep copying a prompt bank (never seen).
_MAX_DRAWS = 50


def caption_from_meta(meta: Mapping[str, Any], rng: np.random.Generator) -> str:
    """One caption of a generated image (its ``SynthImage.meta``), phrasing drawn from ``rng``.

    A draw that would copy a shipped prompt bank verbatim (see the module docstring) is
    replaced by a new draw. Raises ValueError for an excluded defect type (held-out protocol).
    """
    kind = meta.get("defect_type")
    if kind in EXCLUDED_TYPES or meta.get("label") in EXCLUDED_TYPES:
        raise ValueError(f"defect type {kind or meta.get('label')!r} is held out of pretraining")
    if kind and kind not in SEEN_TYPES:
        raise ValueError(f"defect type {kind!r} has no caption vocabulary")
    for _ in range(_MAX_DRAWS):
        raw = _defect_caption(meta, rng) if kind else _normal_caption(meta, rng)
        text = _tidy(raw, rng)
        if copies_prompt_bank(text) is None:
            return check_caption(text)
    raise RuntimeError(f"no caption without a prompt-bank copy in {_MAX_DRAWS} draws: {text!r}")


__all__ = [
    "GENERIC_ONLY_FRACTION",
    "PLAIN_NORMAL_FRACTION",
    "TYPE_ONLY_FRACTION",
    "caption_from_meta",
    "check_caption",
    "location_phrase",
    "orientation_word",
]
