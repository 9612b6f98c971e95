"""A tiny generated dataset and a fast run configuration for end-to-end runner tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from semclip_bench.data.synth import SynthConfig, generate


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "verify_results: reruns committed results/sweep episodes (make verify-results; a few "
        "minutes on 2 cores); deselect with -m 'not verify_results'",
    )


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Runs write stored features to $SEMCLIP_BENCH_CACHE: keep them out of the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEMCLIP_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One category, two defect types, 64 x 64 images: enough for 1- and 2-shot episodes."""
    root = tmp_path_factory.mktemp("tiny_sem")
    config = SynthConfig(
        seed=7,
        categories=("line_space",),
        defect_types=("particle", "scratch"),
        image_size=64,
        n_train_good=4,
        n_test_good=4,
        n_per_defect=7,
    )
    generate(root, config)
    return root


@pytest.fixture(scope="session")
def fast_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """YAML that keeps training to a couple of epochs (no step floor)."""
    path = tmp_path_factory.mktemp("cfg") / "fast.yaml"
    quick = {"training": {"epochs": 2, "batch_size": 8, "min_steps": 0}}
    path.write_text(
        yaml.safe_dump(
            {
                "backbone": "semclip-tiny",
                "device": "cpu",
                "wandb": "disabled",
                "seeds": [0, 1],
                "method_overrides": {"semclip": quick, "anomalyclip": quick},
            }
        )
    )
    return path
