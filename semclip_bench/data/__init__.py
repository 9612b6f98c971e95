"""Data layer: datasets on disk, few-shot episodes, and tensors for the models.

Light imports only here; the tensor side (:mod:`semclip_bench.data.datamodule`) and the generator
(:mod:`semclip_bench.data.synth`) are imported from their modules.
"""

from semclip_bench.data.check import CheckReport, check_dataset
from semclip_bench.data.dataset import load_dataset
from semclip_bench.data.digest import dataset_digest, file_sha256
from semclip_bench.data.episodes import make_episode, support_manifest, write_support_manifest
from semclip_bench.data.images import read_image, read_mask
from semclip_bench.data.types import (
    DEFECT_TYPES,
    NORMAL_LABEL,
    DefectDataset,
    Episode,
    Sample,
)

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
