"""semclip_bench: reference benchmark for few-shot defect detection in SEM wafer images.

Python API (imported on first use, so ``import semclip_bench`` stays light; see
:mod:`semclip_bench.api` and the README's "Python API" section):

* ``run_sweep(data=..., methods=..., shots=..., seeds=..., out=..., **flags) -> DataFrame``
* ``run_ablation(...) -> DataFrame``
* ``load_results(folder) -> DataFrame``
* ``check_data(path) -> CheckReport``
* ``load_method(name, backbone=..., pretrained=...) -> Method`` with ``fit(images, labels,
  masks=None)`` and ``predict(images) -> Prediction`` (scores, maps, class probabilities)
* ``plot_maps(images, prediction, masks=None) -> matplotlib Figure``
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from semclip_bench._version import __version__

#: Public names served lazily from their modules.
_LAZY: dict[str, str] = {
    "run_sweep": "semclip_bench.api",
    "run_ablation": "semclip_bench.api",
    "load_results": "semclip_bench.api",
    "check_data": "semclip_bench.api",
    "load_method": "semclip_bench.api",
    "plot_maps": "semclip_bench.api",
    "Method": "semclip_bench.api",
    "Prediction": "semclip_bench.api",
    "UserError": "semclip_bench.errors",
}

if TYPE_CHECKING:
    from semclip_bench.api import (
        Method,
        Prediction,
        check_data,
        load_method,
        load_results,
        plot_maps,
        run_ablation,
        run_sweep,
    )
    from semclip_bench.errors import UserError


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'semclip_bench' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Method",
    "Prediction",
    "UserError",
    "__version__",
    "check_data",
    "load_method",
    "load_results",
    "plot_maps",
    "run_ablation",
    "run_sweep",
]
