"""Tests of the sem-synth simulator: determinism, masks, layout, bit depth, defect visibility."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy

from semclip_bench import __version__
from semclip_bench.data.synth import (
    CHECKSUMS_NAME,
    FAMILIES,
    MANIFEST_NAME,
    SynthConfig,
    content_digest,
    generate,
    generator_identity,
    render_image,
    write_preview,
)
from semclip_bench.data.types import DEFECT_TYPES
from semclip_bench.errors import UserError

TINY = SynthConfig(image_size=64, n_train_good=2, n_test_good=2, n_per_defect=2)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_generate_writes_mvtec_layout(tmp_path: Path) -> None:
    calls: list[int] = []
    report = generate(tmp_path / "ds", TINY, progress=calls.append)
    root = tmp_path / "ds"
    assert report.n_images == 3 * (2 + 2 + 6 * 2) == sum(calls)
    assert report.images_per_second > 0
    for category in FAMILIES:
        assert sorted(p.name for p in (root / category / "train" / "good").iterdir()) == [
            "000.png",
            "001.png",
        ]
        assert len(list((root / category / "test" / "good").glob("*.png"))) == 2
        for kind in DEFECT_TYPES:
            images = sorted(p.stem for p in (root / category / "test" / kind).glob("*.png"))
            masks = sorted(p.name for p in (root / category / "ground_truth" / kind).iterdir())
            assert images == ["000", "001"]
            assert masks == ["000_mask.png", "001_mask.png"]
        assert not (root / category / "ground_truth" / "good").exists()
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["version"] == __version__
    assert manifest["identity"] == generator_identity()
    assert SynthConfig.from_dict(manifest["config"]) == TINY
    # The content digest covers exactly the images and masks written, by their bytes.
    files = {
        rel: sha
        for rel, sha in _digest(root).items()
        if rel not in (MANIFEST_NAME, CHECKSUMS_NAME, "synth_meta.jsonl")
    }
    assert len(files) == manifest["n_files"] == report.n_images + 3 * 6 * 2
    assert manifest["content_digest"] == report.content_digest == content_digest(files.items())
    listed = (root / CHECKSUMS_NAME).read_text().splitlines()
    assert listed == [f"{sha}  {rel}" for rel, sha in sorted(files.items())]
    # synth.json is written last: nothing in the folder is newer.
    newest = max(p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file())
    assert (root / MANIFEST_NAME).stat().st_mtime_ns == newest


def test_masks_on_disk_are_binary_and_above_the_bar(tmp_path: Path) -> None:
    generate(tmp_path, TINY)
    meta = [json.loads(line) for line in (tmp_path / "synth_meta.jsonl").read_text().splitlines()]
    assert len(meta) == TINY.n_images
    for record in meta:
        if record["mask"] is None:
            assert record["label"] == "good"
            continue
        mask = cv2.imread(str(tmp_path / record["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255} and (mask > 0).any()
        if record["databar"]:
            assert not mask[64 - record["databar_rows"] :].any()


def test_generation_is_deterministic_and_worker_independent(tmp_path: Path) -> None:
    config = SynthConfig(
        image_size=64,
        n_train_good=2,
        n_test_good=1,
        n_per_defect=1,
        categories=("line_space", "metal_cmp"),
    )
    one = generate(tmp_path / "a", config)
    two = generate(tmp_path / "b", config, workers=2)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and len(a) == 2 * (2 + 1 + 6 * 2) + 3
    assert one.content_digest == two.content_digest


def test_non_empty_output_needs_overwrite(tmp_path: Path) -> None:
    config = SynthConfig(image_size=64, n_train_good=1, n_test_good=0, n_per_defect=0)
    generate(tmp_path, config)
    with pytest.raises(UserError, match="not empty"):
        generate(tmp_path, config)
    generate(tmp_path, config, overwrite=True)
    assert (tmp_path / MANIFEST_NAME).exists()


@pytest.mark.parametrize("category", FAMILIES)
@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_mask_covers_exactly_the_drawn_defect(category: str, kind: str) -> None:
    config = SynthConfig(image_size=128, seed=3)
    for index in range(3):
        with_defect = render_image(config, category, "test", kind, index)
        without = render_image(config, category, "test", kind, index, draw_defect=False)
        mask = with_defect.mask
        assert mask is not None and mask.dtype == bool and mask.shape == (128, 128)
        assert mask.sum() >= 4
        bar = with_defect.meta["databar_rows"]
        if bar:
            assert not mask[128 - bar :].any()
            assert np.array_equal(with_defect.image[128 - bar :], without.image[128 - bar :])
        diff = np.abs(with_defect.image.astype(np.int32) - without.image.astype(np.int32))
        # The defect changes the image inside its mask (hard ones are faint, not invisible)...
        assert diff[mask].mean() >= 1.5, (category, kind, index, diff[mask].mean())
        assert (diff[mask] > 0).mean() >= 0.3, (category, kind, index)
        # ...and nowhere beyond the beam blur / edge halo around it.
        near = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        assert diff[~near].max(initial=0) <= 2, (category, kind, index)
        meta = with_defect.meta
        assert meta["defect_type"] == kind and meta["area_px"] == int(mask.sum())
        y0, x0, y1, x1 = meta["bbox"]
        assert mask[y0:y1, x0:x1].sum() == mask.sum()
        json.dumps(meta)  # plain JSON-able values only


def test_good_images_have_no_mask_and_full_meta() -> None:
    for category in FAMILIES:
        result = render_image(TINY, category, "train", "good", 0)
        assert result.mask is None and result.image.dtype == np.uint8
        for key in (
            "family",
            "pitch_px",
            "cd_px",
            "orientation_deg",
            "material",
            "kv",
            "magnification",
            "working_distance_mm",
            "dose",
            "databar",
        ):
            assert key in result.meta
        assert result.meta["defect_type"] is None


def test_render_is_a_pure_function_of_its_key() -> None:
    a = render_image(TINY, "contact_array", "test", "particle", 1)
    b = render_image(TINY, "contact_array", "test", "particle", 1)
    c = render_image(TINY, "contact_array", "test", "particle", 0)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.meta == b.meta
    assert not np.array_equal(a.image, c.image)
    other_seed = SynthConfig(seed=1234, image_size=64, defect_types=("scratch",))
    d = render_image(other_seed, "contact_array", "test", "particle", 1)
    assert not np.array_equal(a.image, d.image) and d.mask is not None and d.mask.any()


def test_16_bit_output_round_trips(tmp_path: Path) -> None:
    config = SynthConfig(
        image_size=64,
        bit_depth=16,
        n_train_good=1,
        n_test_good=0,
        n_per_defect=1,
        categories=("metal_cmp",),
        defect_types=("hole",),
    )
    generate(tmp_path, config)
    path = tmp_path / "metal_cmp" / "test" / "hole" / "000.png"
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint16 and image.shape == (64, 64)
    expected = render_image(config, "metal_cmp", "test", "hole", 0).image
    assert np.array_equal(image, expected) and expected.max() > 255
    mask = cv2.imread(str(tmp_path / "metal_cmp/ground_truth/hole/000_mask.png"), -1)
    assert mask.dtype == np.uint8


def test_databar_is_drawn_on_most_images() -> None:
    config = SynthConfig(image_size=64)
    bars = [
        render_image(config, "line_space", "train", "good", i).meta["databar"] for i in range(40)
    ]
    assert 0.6 <= np.mean(bars) < 1.0
    always = SynthConfig(image_size=64, databar_fraction=1.0)
    result = render_image(always, "line_space", "test", "scratch", 0)
    rows = result.meta["databar_rows"]
    assert rows > 0 and not result.mask[-rows:].any()
    # The bar is text on a flat background: one value covers most of it.
    _, counts = np.unique(result.image[-rows:], return_counts=True)
    assert counts.max() > 0.5 * rows * 64


def test_write_preview(tmp_path: Path) -> None:
    path = write_preview(tmp_path / "sheet.png", TINY)
    sheet = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert sheet.shape[0] > 3 * 64 and sheet.shape[1] > 7 * 64
    # Mask outlines are coloured, the images themselves are grey.
    b, _g, r = cv2.split(sheet.astype(np.int32))
    assert ((r - b) > 100).any()


def test_bad_options_are_user_errors() -> None:
    with pytest.raises(UserError, match="categories"):
        SynthConfig(categories=("wafer",))
    with pytest.raises(UserError, match="bit_depth"):
        SynthConfig(bit_depth=12)
    with pytest.raises(UserError, match="defect_types"):
        SynthConfig(defect_types=("crack",))
    with pytest.raises(UserError, match="label"):
        render_image(TINY, "line_space", "test", "crack", 0)
    with pytest.raises(UserError, match="unknown option"):
        SynthConfig.from_dict({"sead": 1})


#: sha256 of the raw pixels (image bytes, then mask bytes) of image 0 of every class of every
#: family at 64 px, seed 0 (see the test below).
PINNED_PIXELS = {
    "line_space/good": "8e1f3cb9a6f0911e",
    "line_space/bridge": "b6c3c64d983f74dd",
    "line_space/copper_residue": "c69104b377497449",
    "line_space/hole": "51d66ed805f1b4bb",
    "line_space/infilm": "0f2815366f5b62f7",
    "line_space/particle": "023c6d80b131f68a",
    "line_space/scratch": "9e5d62fd14af11b8",
    "contact_array/good": "b2256a34f3b1d68f",
    "contact_array/bridge": "c550a090faf6f7bc",
    "contact_array/copper_residue": "b1d22a8b48a9bb6c",
    "contact_array/hole": "bb82596a7d9dc358",
    "contact_array/infilm": "284c0f14993e5403",
    "contact_array/particle": "8cebc415a1df325c",
    "contact_array/scratch": "8774999e97fcabbc",
    "metal_cmp/good": "56973a5fee281ebc",
    "metal_cmp/bridge": "7e4b49bb141ece69",
    "metal_cmp/copper_residue": "452a6358decfcce7",
    "metal_cmp/hole": "c507ccaee27d2afd",
    "metal_cmp/infilm": "a797d2c226b50747",
    "metal_cmp/particle": "17dea6da4553cc45",
    "metal_cmp/scratch": "bc4416bd37f7d2ef",
}
#: The versions the hashes above were pinned under (the generator is built not to depend on
#: them; a failure under other versions says which differ).
PINNED_UNDER = {"numpy": "2.4.6", "scipy": "1.17.1"}


def test_pixels_are_pinned() -> None:
    """Fails on ANY change of what the generator draws, so that none goes unnoticed.

    Cached datasets are keyed by the generator's source code, so a change is never served from an
    old cache; but an *unintended* change (a refactor that moves a random draw) would still
    silently change every benchmark number. If the change is intended, update the hashes below in
    the same commit and say so in its message (tables made before it are no longer comparable).
    Raw pixel arrays are hashed, not PNG files, so a different PNG encoder does not matter.
    """
    config = SynthConfig(image_size=64, n_train_good=1, n_test_good=1, n_per_defect=1)
    found = {}
    for category in config.categories:
        for label in ("good", *config.defect_types):
            result = render_image(config, category, "test", label, 0)
            digest = hashlib.sha256(result.image.tobytes())
            if result.mask is not None:
                digest.update(result.mask.tobytes())
            found[f"{category}/{label}"] = digest.hexdigest()[:16]
    running = {"numpy": np.__version__, "scipy": scipy.__version__}
    differing = [
        f"{name} {PINNED_UNDER[name]} -> {running[name]}"
        for name in PINNED_UNDER
        if running[name] != PINNED_UNDER[name]
    ]
    changed = sorted(k for k in PINNED_PIXELS if found.get(k) != PINNED_PIXELS[k])
    assert not changed, (
        f"{len(changed)} of {len(PINNED_PIXELS)} pinned renders differ ({', '.join(changed)}); "
        f"pinned under {PINNED_UNDER}, running "
        + (", ".join(differing) if differing else "the same versions")
    )
