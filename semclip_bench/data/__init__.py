"""Data layer: datasets on disk, few-shot episodes, and tensors for the models.

The public names below are loaded from their modules on first use, so importing a submodule
(``semclip_bench.data.commands`` for the CLI's ``--help``) does not import NumPy and OpenCV. The
tensor side (:mod:`semclip_bench.data.datamodule`) and the generator
(:mod:`semclip_bench.data.synth`) are imported from their modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public names served lazily: name -> the module that defines it.
_LAZY: dict[str, str] = {
    "CheckReport": "semclip_bench.data.check",
    "check_dataset": "semclip_bench.data.check",
    "load_dataset": "semclip_bench.data.dataset",
    "dataset_digest": "semclip_bench.data.digest",
    "file_sha256": "semclip_bench.data.digest",
    "make_episode": "semclip_bench.data.episodes",
    "support_manifest": "semclip_bench.data.episodes",
    "write_support_manifest": "semclip_bench.data.episodes",
    "read_image": "semclip_bench.data.images",
    "read_mask": "semclip_bench.data.images",
    "DEFECT_TYPES": "semclip_bench.data.types",
    "NORMAL_LABEL": "semclip_bench.data.types",
    "DefectDataset": "semclip_bench.data.types",
    "Episode": "semclip_bench.data.types",
    "Sample": "semclip_bench.data.types",
}

if TYPE_CHECKING:
    from semclip_bench.data.check import CheckReport, check_dataset
    from semclip_bench.data.dataset import load_dataset
    from semclip_bench.data.digest import dataset_digest, file_sha256
    from semclip_bench.data.episodes import (
        make_episode,
        support_manifest,
        write_support_manifest,
    )
    from semclip_bench.data.images import read_image, read_mask
    from semclip_bench.data.types import (
        DEFECT_TYPES,
        NORMAL_LABEL,
        DefectDataset,
        Episode,
        Sample,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'semclip_bench.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "DEFECT_TYPES",
    "NORMAL_LABEL",
    "CheckReport",
    "DefectDataset",
    "Episode",
    "Sample",
    "check_dataset",
    "dataset_digest",
    "file_sha256",
    "load_dataset",
    "make_episode",
    "read_image",
    "read_mask",
    "support_manifest",
    "write_support_manifest",
]
