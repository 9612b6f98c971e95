"""Class names of the benchmark: the paper's defect types, which of them the shipped backbone's
pretraining shows, and the MVTec AD normal label.

A module of its own because the sem-synth generator depends on these names (they pick paths and
random streams): its cache key hashes this file, not the larger :mod:`semclip_bench.data.types`.
"""

#: The paper's six defect types, in the order used for class indices (after ``good``).
DEFECT_TYPES: tuple[str, ...] = (
    "bridge",
    "copper_residue",
    "hole",
    "infilm",
    "particle",
    "scratch",
)

#: Defect types kept out of pretraining (images and captions), reported as "unseen".
EXCLUDED_TYPES: tuple[str, ...] = ("scratch", "infilm")
#: Defect types used in pretraining, reported as "seen".
SEEN_TYPES: tuple[str, ...] = ("bridge", "copper_residue", "hole", "particle")

#: Label of normal (defect-free) images, as in the MVTec AD layout.
NORMAL_LABEL = "good"
