"""Methods of the benchmark: one module per method, each a :class:`FewShotMethod`.

``METHODS`` maps a method's registry name to ``"module:Class"``; modules are imported on demand so
that a missing optional dependency of one method does not break the others.
"""

from __future__ import annotations

import importlib

from semclip_bench.errors import UserError
from semclip_bench.models.base import FewShotMethod, MethodOutput, SupportSet

METHODS: dict[str, str] = {
    "semclip": "semclip_bench.models.semclip:SemClip",
    "winclip": "semclip_bench.models.winclip:WinClip",
    "anomalyclip": "semclip_bench.models.anomalyclip:AnomalyClip",
    "patchcore": "semclip_bench.models.patchcore:PatchCore",
    "linear_probe": "semclip_bench.models.linear_probe:LinearProbe",
}


def method_class(name: str) -> type[FewShotMethod]:
    """The class registered under ``name``; a clear error for an unknown name."""
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (--methods): choose from {', '.join(METHODS)}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["METHODS", "FewShotMethod", "MethodOutput", "SupportSet", "method_class"]
