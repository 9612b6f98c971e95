"""Methods of the benchmark: one module per method, each a :class:`FewShotMethod`.

``METHODS`` maps a method's registry name to ``"module:Class"``; modules are imported on demand so
that a missing optional dependency of one method does not break the others.

Third-party methods register through the entry-point group ``semclip_bench.methods``
(``name = "module:Class"`` in the plugin's ``pyproject.toml``, see ``docs/adding_a_method.md``):
they are listed in ``METHODS`` next to the built-in ones, so ``--methods``, the tables and W&B
treat them alike. A plugin cannot replace a built-in method; a broken plugin fails with one
error naming it, and only when it is used.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from importlib import metadata

from semclip_bench.errors import UserError
from semclip_bench.models.base import (
    SUPERVISION_TEXT,
    FewShotMethod,
    MethodOutput,
    SupportSet,
    pixel_supervision,
    supervision_text,
)

log = logging.getLogger(__name__)

#: Entry-point group of method plugins.
ENTRY_POINT_GROUP = "semclip_bench.methods"

BUILTIN_METHODS: dict[str, str] = {
    "semclip": "semclip_bench.models.semclip:SemClip",
    "winclip": "semclip_bench.models.winclip:WinClip",
    "anomalyclip": "semclip_bench.models.anomalyclip:AnomalyClip",
    "patchcore": "semclip_bench.models.patchcore:PatchCore",
    "linear_probe": "semclip_bench.models.linear_probe:LinearProbe",
}

#: A method name: it appears in episode ids, file names and W&B groups.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def discover_plugins() -> dict[str, tuple[str, str]]:
    """Installed method plugins: ``{name: ("module:Class", distribution)}``.

    Entry points with an invalid name, or the name of a built-in method, are skipped with a
    warning naming them (the built-in method keeps its name).
    """
    found: dict[str, tuple[str, str]] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(entry, "dist", None), "name", None) or "unknown distribution"
        if not _NAME.match(entry.name):
            log.warning("method plugin '%s' (%s) ignored: invalid method name", entry.name, dist)
        elif entry.name in BUILTIN_METHODS:
            log.warning(
                "method plugin '%s' (%s) ignored: a built-in method has that name", entry.name, dist
            )
        elif entry.name in found and found[entry.name][0] != entry.value:
            log.warning(
                "method plugin '%s' of %s ignored: %s registers it too",
                entry.name,
                dist,
                found[entry.name][1],
            )
        else:
            found.setdefault(entry.name, (entry.value, dist))
    return found


#: Installed plugins, found once at import: ``{name: ("module:Class", distribution)}``.
PLUGINS: dict[str, tuple[str, str]] = discover_plugins()

#: Every available method: built-in ones first, then plugins (sorted by name).
METHODS: dict[str, str] = {
    **BUILTIN_METHODS,
    **{name: PLUGINS[name][0] for name in sorted(PLUGINS)},
}


def method_class(name: str) -> type[FewShotMethod]:
    """The class registered under ``name``; one clear UserError for an unknown or broken one."""
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (--methods): choose from {', '.join(METHODS)}")
    target = METHODS[name]
    if name not in PLUGINS:
        module_name, class_name = target.split(":")
        return getattr(importlib.import_module(module_name), class_name)
    where = f"method plugin '{name}' ({target}, from {PLUGINS[name][1]})"
    module_name, _, class_name = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in class_name.split(".") if class_name else ():
            obj = getattr(obj, part)
    except Exception as exc:  # any failure inside third-party code: name the plugin
        raise UserError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    _check_plugin(obj, name, where)
    return obj


def _check_plugin(cls: object, name: str, where: str) -> None:
    """The parts of the :class:`FewShotMethod` contract the runner relies on."""
    if not (inspect.isclass(cls) and issubclass(cls, FewShotMethod)):
        raise UserError(f"{where} is not a FewShotMethod subclass (see docs/adding_a_method.md)")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise UserError(f"{where} does not implement {missing}")
    if getattr(cls, "name", None) != name:
        raise UserError(
            f"{where}: its class attribute name = {getattr(cls, 'name', None)!r} differs from "
            f"the entry-point name '{name}'"
        )
    if getattr(cls, "supervision", None) not in SUPERVISION_TEXT:
        raise UserError(
            f"{where}: supervision = {getattr(cls, 'supervision', None)!r}; "
            f"choose from {', '.join(SUPERVISION_TEXT)}"
        )
    if cls.trainable and cls.training_loss is FewShotMethod.training_loss:
        raise UserError(f"{where}: trainable = True but training_loss is not implemented")


__all__ = [
    "BUILTIN_METHODS",
    "ENTRY_POINT_GROUP",
    "METHODS",
    "PLUGINS",
    "FewShotMethod",
    "MethodOutput",
    "SupportSet",
    "discover_plugins",
    "method_class",
    "pixel_supervision",
    "supervision_text",
]
