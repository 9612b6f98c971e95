"""``sem-synth``: procedural SEM images of wafer patterns with the paper's six defect types.

Three pattern families (line/space, contact arrays, polished metal with grains), six defect types
with exact masks, SEM imaging nuisances (edge brightening, beam blur, shot and scan-line noise,
charging, drift, rotation, the tool's data bar), written in the MVTec AD layout.
Each image is a pure function of ``(seed, category, split, label, index)``. Generated folders
are identified by the generator's source code and their content digest (:mod:`.identity`).
"""

from semclip_bench.data.synth.config import DATA_SEEDS, FAMILIES, SynthConfig
from semclip_bench.data.synth.generate import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    META_NAME,
    METADATA_NAMES,
    GenerationReport,
    generate,
    image_tasks,
    relative_paths,
    write_preview,
)
from semclip_bench.data.synth.identity import (
    checksum_lines,
    content_digest,
    generator_identity,
    source_digest,
    source_files,
)
from semclip_bench.data.synth.render import SynthImage, render_image

__all__ = [
    "CHECKSUMS_NAME",
    "DATA_SEEDS",
    "FAMILIES",
    "MANIFEST_NAME",
    "METADATA_NAMES",
    "META_NAME",
    "GenerationReport",
    "SynthConfig",
    "SynthImage",
    "checksum_lines",
    "content_digest",
    "generate",
    "generator_identity",
    "image_tasks",
    "relative_paths",
    "render_image",
    "source_digest",
    "source_files",
    "write_preview",
]
