"""What the pretraining captions must (and must not) share with the evaluated methods' prompts.

The backbone is method-neutral when its captions contain the words that every method's prompts
use (so no method's text branch meets untrained tokens) but copy none of their sentences (so no
method's exact wording is favoured). This module reads the shipped prompt banks
(``configs/prompts/{expert,generic,winclip}.yaml``) and AnomalyCLIP-style's fixed prompt words
and gives:

* :func:`checked_words`: the words the caption vocabulary must contain, by source;
* :func:`unchecked_words`: the bank words left out of that check, with the reason;
* :func:`copies_prompt_bank`: the prompt sentence, template or multi-word state phrase that a
  caption copies verbatim (or None), used by the caption generator to redraw such a caption.

Text is compared as lower-case words (``[a-z0-9]+``), so punctuation and hyphens do not matter.
"""

from __future__ import annotations

import re
from functools import lru_cache

from semclip_bench.data.labels import NORMAL_LABEL, SEEN_TYPES

#: Template words not required in captions: the images are not JPEG files, so a caption that
#: said so would be false.
TEMPLATE_WORDS_NOT_CHECKED: dict[str, str] = {"jpeg": "the images are not JPEG files"}
_ARTICLES = ("a", "an", "the")
#: Words that would leak a held-out type (``data.labels.EXCLUDED_TYPES``) into a caption, its
#: name or a synonym (matched case-insensitively).
HELD_OUT_WORDS = re.compile(
    r"scratch|in[\s_-]?film|groove|buried|embedded|bulge|bump", re.IGNORECASE
)


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters and digits; hyphens and punctuation split)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def normalise(text: str) -> str:
    """``text`` as its lower-case words joined by single spaces."""
    return " ".join(words(text))


@lru_cache(maxsize=1)
def _banks() -> dict[str, object]:
    """The shipped banks: expert and generic (PromptBank), winclip (its prompt config) and
    AnomalyCLIP-style's two prompt texts."""
    from semclip_bench.models.anomalyclip import ABNORMAL_WORDS, NORMAL_WORDS
    from semclip_bench.models.winclip import load_prompt_config
    from semclip_bench.prompts import load_prompt_bank

    return {
        "expert": load_prompt_bank("expert"),
        "generic": load_prompt_bank("generic"),
        "winclip": load_prompt_config(None),
        "anomalyclip": (NORMAL_WORDS, ABNORMAL_WORDS),
    }


def _winclip_objects() -> list[str]:
    """Object names WinCLIP fills in: the bank's per-category names and the fallback "object"."""
    names = _banks()["winclip"]["object_names"]  # type: ignore[index]
    return [*dict.fromkeys([*names.values(), "object"])]


@lru_cache(maxsize=1)
def checked_words() -> dict[str, tuple[str, ...]]:
    """Words the caption vocabulary must contain, by source.

    * ``expert states`` / ``generic states``: every word of the bank's phrases of the normal
      class and of the seen defect types (the held-out types' phrases are names of classes the
      pretraining never shows, see :data:`semclip_bench.data.labels.EXCLUDED_TYPES`);
    * ``winclip states``: every word of the normal and anomalous state phrases;
    * ``winclip object names``: every word of the per-category object names;
    * ``anomalyclip prompts``: the fixed words of the two prompts ("object", "damaged");
    * ``templates``: every word of the three banks' templates.

    Words that name a held-out type (e.g. "scratches" in an expert normal phrase) and
    :data:`TEMPLATE_WORDS_NOT_CHECKED` are left out (:func:`unchecked_words`).
    """
    banks = _banks()
    classes = (NORMAL_LABEL, *SEEN_TYPES)
    winclip = banks["winclip"]
    sources: dict[str, list[str]] = {
        "expert states": [s for c in classes for s in banks["expert"].states_for(c)],
        "generic states": [s for c in classes for s in banks["generic"].states_for(c)],
        "winclip states": [
            s.replace("{}", " ")
            for key in ("normal_states", "anomalous_states")
            for s in winclip[key]  # type: ignore[index]
        ],
        "winclip object names": list(winclip["object_names"].values()),  # type: ignore[index]
        "anomalyclip prompts": list(banks["anomalyclip"]),  # type: ignore[arg-type]
        "templates": [
            t.replace("{}", " ")
            for t in (
                *banks["expert"].templates,
                *banks["generic"].templates,
                *winclip["templates"],  # type: ignore[index]
            )
        ],
    }
    out = {}
    for source, texts in sources.items():
        found = dict.fromkeys(w for t in texts for w in words(t))
        out[source] = tuple(
            w for w in found if not HELD_OUT_WORDS.search(w) and w not in TEMPLATE_WORDS_NOT_CHECKED
        )
    return out


def unchecked_words() -> dict[str, str]:
    """Words of the banks' normal / seen-type phrases and templates left out of
    :func:`checked_words`, with the reason."""
    banks = _banks()
    texts = [
        *(s for c in (NORMAL_LABEL, *SEEN_TYPES) for s in banks["expert"].states_for(c)),
        *banks["expert"].templates,
        *banks["generic"].templates,
        *banks["winclip"]["templates"],  # type: ignore[index]
    ]
    out = {}
    for w in dict.fromkeys(w for t in texts for w in words(t)):
        if HELD_OUT_WORDS.search(w):
            out[w] = "it names a held-out defect type, which no pretraining caption may"
        elif w in TEMPLATE_WORDS_NOT_CHECKED:
            out[w] = TEMPLATE_WORDS_NOT_CHECKED[w]
    return out


@lru_cache(maxsize=1)
def prompt_sentences() -> tuple[str, ...]:
    """Every prompt the methods build from the shipped banks (normalised): expert and generic
    template x state for every class, WinCLIP template x state x object name, AnomalyCLIP's
    fixed prompt words."""
    from semclip_bench.models.winclip import compose_prompts

    banks = _banks()
    out: list[str] = []
    for name in ("expert", "generic"):
        bank = banks[name]
        for c in bank.states:  # type: ignore[attr-defined]
            out += bank.prompts_for(c)  # type: ignore[attr-defined]
    winclip = banks["winclip"]
    for obj in _winclip_objects():
        for key in ("normal_states", "anomalous_states"):
            out += compose_prompts(winclip[key], winclip["templates"], obj)  # type: ignore[index]
    out += [t for t in banks["anomalyclip"] if len(words(t)) > 1]  # type: ignore[union-attr]
    return tuple(dict.fromkeys(normalise(s) for s in out))


@lru_cache(maxsize=1)
def verbatim_phrases() -> tuple[str, ...]:
    """Phrases a caption must not contain (normalised): every bank state phrase of three or more
    words (leading article dropped), every WinCLIP state filled with an object name except the
    bare object name, and AnomalyCLIP's "damaged object"."""
    banks = _banks()
    out: list[str] = []
    for name in ("expert", "generic"):
        for phrases in banks[name].states.values():  # type: ignore[attr-defined]
            for phrase in phrases:
                ws = words(phrase)
                ws = ws[1:] if ws and ws[0] in _ARTICLES else ws
                if len(ws) >= 3:
                    out.append(" ".join(ws))
    winclip = banks["winclip"]
    for obj in _winclip_objects():
        for key in ("normal_states", "anomalous_states"):
            out += [
                normalise(s.format(obj))
                for s in winclip[key]  # type: ignore[index]
                if normalise(s.replace("{}", ""))
            ]
    out += [normalise(t) for t in banks["anomalyclip"] if len(words(t)) > 1]  # type: ignore[union-attr]
    return tuple(dict.fromkeys(out))


@lru_cache(maxsize=1)
def template_patterns() -> tuple[re.Pattern[str], ...]:
    """One regex per bank template (normalised text): its words before and after the
    placeholder, with anything in between."""
    banks = _banks()
    templates = (
        *banks["expert"].templates,  # type: ignore[attr-defined]
        *banks["generic"].templates,  # type: ignore[attr-defined]
        *banks["winclip"]["templates"],  # type: ignore[index]
    )
    out = []
    for t in dict.fromkeys(templates):
        before, after = (normalise(part) for part in t.split("{}", 1))
        pattern = r"(?:^| )" + re.escape(before) + r" .+"
        if after:
            pattern += " " + re.escape(after) + r"(?: |$)"
        out.append(re.compile(pattern))
    return tuple(out)


def copies_prompt_bank(text: str) -> str | None:
    """What ``text`` copies verbatim from the banks (a phrase of :func:`verbatim_phrases`, or a
    template as ``template: ...``), or None."""
    norm = f" {normalise(text)} "
    for phrase in verbatim_phrases():
        if f" {phrase} " in norm:
            return phrase
    for pattern in template_patterns():
        if pattern.search(norm.strip()):
            return f"template: {pattern.pattern}"
    return None


__all__ = [
    "HELD_OUT_WORDS",
    "TEMPLATE_WORDS_NOT_CHECKED",
    "checked_words",
    "copies_prompt_bank",
    "normalise",
    "prompt_sentences",
    "template_patterns",
    "unchecked_words",
    "verbatim_phrases",
    "words",
]
