"""The sem-synth cache: content-addressed keys, verification on reuse, variants (test / val)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import threading
from pathlib import Path

import pytest

from semclip_bench.data import check_dataset, dataset_digest, load_dataset, synth
from semclip_bench.data.fixtures import tiny_synth_config
from semclip_bench.data.synth import DATA_SEEDS, MANIFEST_NAME, identity
from semclip_bench.data.synth_cache import (
    ensure_synth,
    parse_synth_spec,
    synth_cache_key,
    synth_cache_path,
    verify_synth,
)
from semclip_bench.errors import UserError

PACKAGE = Path(synth.__file__).resolve().parents[2]


def _tiny(**kwargs: object) -> synth.SynthConfig:
    options: dict = dict(n_train_good=1, n_test_good=1, n_per_defect=1, defect_types=("hole",))
    options.update(kwargs)
    return tiny_synth_config(**options)


def _visible(folder: Path) -> list[str]:
    """Entries of a cache folder, without the lock files of concurrent generation."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def _no_generation(*args: object, **kwargs: object) -> None:
    raise AssertionError("regenerated a cached dataset")


def test_generated_once_and_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _tiny()
    real_generate = synth.generate

    def interrupted(root: Path, config: object, **kwargs: object) -> None:
        real_generate(root, config, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_synth(config, cache_dir=tmp_path)
    assert _visible(tmp_path) == []  # no half dataset, no temporary folder left

    monkeypatch.setattr(synth, "generate", real_generate)
    target = ensure_synth(config, cache_dir=tmp_path)
    assert target == synth_cache_path(config, tmp_path)
    assert target.name.startswith("sem-synth-test-") and (target / MANIFEST_NAME).is_file()
    assert _visible(tmp_path) == [target.name]
    assert verify_synth(target, config) is None

    monkeypatch.setattr(synth, "generate", _no_generation)
    assert ensure_synth(config, cache_dir=tmp_path) == target


def test_concurrent_users_generate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _tiny()
    real_generate = synth.generate
    calls: list[Path] = []

    def counting(root: Path, config: object, **kwargs: object) -> object:
        calls.append(root)
        return real_generate(root, config, **kwargs)

    monkeypatch.setattr(synth, "generate", counting)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_synth(config, cache_dir=tmp_path)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3
    assert _visible(tmp_path) == [results[0].name]


def test_generator_sources_are_the_synth_package_and_what_it_imports() -> None:
    names = {p.relative_to(PACKAGE.parent).as_posix() for p in identity.source_files()}
    synth_dir = Path(synth.__file__).parent
    assert {f"semclip_bench/data/synth/{p.name}" for p in synth_dir.glob("*.py")} <= names
    assert "semclip_bench/data/labels.py" in names  # defect type names pick paths and seeds
    # Modules the generator does not import do not invalidate its caches.
    for unrelated in ("data/types.py", "data/dataset.py", "data/synth_cache.py", "cli.py"):
        assert f"semclip_bench/{unrelated}" not in names


def test_cache_key_changes_with_generator_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _tiny()
    sources = identity.source_files()
    render = next(p for p in sources if p.name == "render.py")
    copy = tmp_path / "render.py"
    shutil.copyfile(render, copy)
    patched = [copy if p == render else p for p in sources]
    monkeypatch.setattr(identity, "source_files", lambda: patched)
    before = synth_cache_path(config, tmp_path)
    assert synth_cache_path(config, tmp_path) == before  # deterministic
    copy.write_text(copy.read_text() + "\n# a changed line of generator code\n")
    after = synth_cache_path(config, tmp_path)
    assert after != before and after.parent == before.parent
    # A new NumPy / OpenCV (random streams, filters, encoders) gets its own cache too.
    monkeypatch.setattr(identity.np, "__version__", "0.0-other")
    assert synth_cache_path(config, tmp_path) not in (before, after)


def test_cache_key_changes_with_config_and_variant() -> None:
    config = _tiny()
    key = synth_cache_key(config)
    assert key == synth_cache_key(_tiny()) and len(key) == 64
    assert synth_cache_key(_tiny(seed=1)) != key
    assert synth_cache_key(_tiny(image_size=64)) != key
    assert synth_cache_key(_tiny(n_per_defect=2)) != key
    assert synth_cache_key(config, "val") != key


@pytest.mark.parametrize("change", ["edit", "truncate", "add", "remove", "manifest"])
def test_altered_cache_is_regenerated_with_one_log_line(
    change: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _tiny(n_per_defect=2)
    target = ensure_synth(config, cache_dir=tmp_path)
    recorded = (target / MANIFEST_NAME).read_text()
    image = target / "line_space" / "test" / "hole" / "001.png"
    original = image.read_bytes()
    expected = {
        "edit": "line_space/test/hole/001.png was changed",
        "truncate": "line_space/test/hole/001.png was changed",
        "add": "line_space/test/hole/002.png was added",
        "remove": "line_space/test/hole/001.png is missing",
        "manifest": f"no {MANIFEST_NAME}",
    }[change]
    if change == "edit":
        data = bytearray(original)
        data[-20] ^= 0xFF
        image.write_bytes(bytes(data))
    elif change == "truncate":
        image.write_bytes(original[: len(original) // 2])
    elif change == "add":
        shutil.copyfile(image, image.with_name("002.png"))
    elif change == "remove":
        image.unlink()
    else:
        (target / MANIFEST_NAME).unlink()
    assert expected in (verify_synth(target, config) or "")

    with caplog.at_level(logging.INFO, logger="semclip_bench"):
        assert ensure_synth(config, cache_dir=tmp_path) == target
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"sem-synth cache {target}: ")
    assert expected in warnings[0] and warnings[0].endswith("; regenerating")
    if change != "manifest":
        assert "content digest mismatch (recorded " in warnings[0]
    assert image.read_bytes() == original and not image.with_name("002.png").exists()
    assert (target / MANIFEST_NAME).read_text() == recorded
    assert verify_synth(target, config) is None and _visible(tmp_path) == [target.name]


def test_config_recorded_must_match(tmp_path: Path) -> None:
    config = _tiny()
    target = ensure_synth(config, cache_dir=tmp_path)
    assert "different generator config" in (verify_synth(target, _tiny(seed=3)) or "")


def test_load_sem_synth_variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = _tiny()
    monkeypatch.setattr(synth, "SynthConfig", lambda: tiny)  # the benchmark config, shrunk
    monkeypatch.setenv("SEMCLIP_BENCH_CACHE", str(tmp_path / "cache"))
    test = load_dataset("sem-synth")
    assert test.name == "sem-synth" and len(test.samples) == 3
    assert test.root == synth_cache_path(tiny, tmp_path / "cache")
    assert load_dataset("sem-synth:test").root == test.root
    assert load_dataset("sem-synth:test").name == "sem-synth"
    val = load_dataset("sem-synth:val")
    assert val.name == "sem-synth:val"
    val_config = dataclasses.replace(tiny, seed=DATA_SEEDS["val"])
    assert val.root == synth_cache_path(val_config, tmp_path / "cache", variant="val")
    assert dataset_digest(val) != dataset_digest(test)
    assert check_dataset("sem-synth:val").ok


def test_validation_images_are_disjoint_from_test(tmp_path: Path) -> None:
    from semclip_bench.pretrain.data import MIN_PRETRAIN_SEED

    seeds = sorted(DATA_SEEDS.values())
    assert DATA_SEEDS["test"] == 0 and DATA_SEEDS["val"] == 1
    assert len(set(seeds)) == len(seeds) and max(seeds) < MIN_PRETRAIN_SEED
    config = _tiny(n_train_good=2, n_test_good=2, defect_types=("hole", "scratch"))
    roots = {
        variant: ensure_synth(
            dataclasses.replace(config, seed=DATA_SEEDS[variant]), tmp_path, variant=variant
        )
        for variant in ("test", "val")
    }
    hashes = {
        variant: {
            hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*.png")
            if "ground_truth" not in p.parts
        }
        for variant, root in roots.items()
    }
    assert len(hashes["test"]) == len(hashes["val"]) == 6
    assert not hashes["test"] & hashes["val"]


@pytest.mark.parametrize("spec", ["sem-synth:foo", "sem-synth:", "sem-synth:VAL"])
def test_unknown_variant_is_one_user_error(spec: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_dataset(spec, cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"dataset '{spec}': unknown sem-synth variant" in message
    assert "'sem-synth:val'" in message
    assert list(tmp_path.iterdir()) == []  # nothing generated
    assert not check_dataset(spec, cache_dir=tmp_path).ok


def test_parse_synth_spec() -> None:
    assert parse_synth_spec("sem-synth") == "test" and parse_synth_spec("sem-synth:test") == "test"
    assert parse_synth_spec("sem-synth:val") == "val"
    assert parse_synth_spec("data/sem-synth") is None and parse_synth_spec(Path("x")) is None
    assert parse_synth_spec("sem-synthetic") is None


def test_content_digest_survives_a_move(tmp_path: Path) -> None:
    """Only relative paths enter the digest: a cache folder copied elsewhere still verifies."""
    config = _tiny()
    target = ensure_synth(config, cache_dir=tmp_path / "a")
    copy = tmp_path / "b" / target.name
    shutil.copytree(target, copy)
    assert verify_synth(copy, config) is None


def test_spawned_worker_importing_main_gets_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker spawned by the generator re-imports the caller's script; if that script loads
    sem-synth at import time, the worker must fail at once instead of waiting for the lock that
    its parent holds."""
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(UserError, match="__main__"):
        ensure_synth(_tiny(), cache_dir=tmp_path)
    assert _visible(tmp_path) == []
