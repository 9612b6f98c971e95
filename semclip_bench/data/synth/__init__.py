"""``sem-synth``: procedural SEM images of wafer patterns with the paper's six defect types.

Three pattern families (line/space, contact arrays, polished metal with grains), six defect types
with exact masks, SEM imaging nuisances (edge brightening, beam blur, shot and scan-line noise,
charging, drift, rotation, the tool's data bar), written in the MVTec AD layout.
Each image is a pure function of ``(seed, category, split, label, index)``.
"""

from semclip_bench.data.synth.config import FAMILIES, GENERATOR_VERSION, SynthConfig
from semclip_bench.data.synth.generate import (
    MANIFEST_NAME,
    META_NAME,
    GenerationReport,
    generate,
    image_tasks,
    relative_paths,
    write_preview,
)
from semclip_bench.data.synth.render import SynthImage, render_image

__all__ = [
    "FAMILIES",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "META_NAME",
    "GenerationReport",
    "SynthConfig",
    "SynthImage",
    "generate",
    "image_tasks",
    "relative_paths",
    "render_image",
    "write_preview",
]
