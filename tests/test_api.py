"""The Python API (``semclip_bench.run_sweep``, ``load_method`` ...) and the README's example."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import semclip_bench as sb
from semclip_bench.cli import main
from semclip_bench.data import load_dataset, make_episode
from semclip_bench.data.fixtures import write_tiny_mvtec
from semclip_bench.errors import UserError
from semclip_bench.metrics import evaluate
from semclip_bench.runner.record.row_store import METRIC_COLUMNS

CHECKOUT = Path(sb.__file__).resolve().parents[1]
FAST = {"semclip": {"training": {"epochs": 2, "batch_size": 8}}}
TINY = dict(backbone="semclip-tiny", device="cpu", wandb="disabled")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mvtec(tmp_path_factory.mktemp("api") / "ds")


@pytest.fixture(scope="module")
def api_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("api_out")
    rows = sb.run_sweep(
        data,
        methods=["patchcore", "semclip"],
        shots=[1],
        seeds=[0],
        out=out,
        method_overrides=FAST,
        **TINY,
    )
    return out, rows


def test_import_is_light_and_lists_the_api() -> None:
    code = "import sys, semclip_bench as sb; print('torch' in sys.modules, 'run_sweep' in dir(sb))"
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_run_sweep_writes_the_cli_files_and_returns_the_rows(api_run) -> None:
    out, rows = api_run
    assert list(rows["variant"]) == ["patchcore", "semclip"]
    assert set(rows["status"]) == {"ok"}
    assert (out / "sweep.md").is_file() and (out / "sweep" / "supports.jsonl").is_file()
    assert isinstance(rows["per_type_auroc"].iloc[0], dict)  # JSON columns parsed
    assert rows["na_reasons"].iloc[0]["cls_accuracy"] == "patchcore does not classify defect types"
    again = sb.load_results(out / "sweep")
    assert again[list(METRIC_COLUMNS)].equals(rows[list(METRIC_COLUMNS)])
    provenance = json.loads((out / "sweep" / "provenance.json").read_text())
    assert provenance["command"].startswith("semclip_bench.run_sweep(data=")
    assert len(sb.load_results(out)) == 2  # the out folder itself works too


def test_cli_and_api_give_the_same_rows(api_run, data: Path, tmp_path: Path) -> None:
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump({"method_overrides": FAST, **TINY}))
    args = ["sweep", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "o")]
    assert main([*args, "--methods", "patchcore,semclip", "--shots", "1", "--seeds", "0"]) == 0
    cli = sb.load_results(tmp_path / "o")
    _, api = api_run
    columns = ["episode_id", *METRIC_COLUMNS, "supervision"]
    assert cli[columns].equals(api[columns])


def test_run_ablation(data: Path, tmp_path: Path) -> None:
    rows = sb.run_ablation(
        data, ablations=["single_path"], shots=[1], seeds=[0], out=tmp_path,
        method_overrides=FAST, **TINY,
    )  # fmt: skip
    assert list(rows["variant"]) == ["semclip", "semclip-single_path"]
    assert (tmp_path / "ablation.md").is_file()


def test_run_sweep_option_errors() -> None:
    with pytest.raises(UserError, match=r"run_sweep\(\): unknown option 'shot'"):
        sb.run_sweep("sem-synth", shot=[1])
    with pytest.raises(UserError, match=r"run_sweep\(\): bad value for 'shots'"):
        sb.run_sweep("sem-synth", shots="one")
    with pytest.raises(UserError, match=r"devices=2\): several processes need the command line"):
        sb.run_sweep("sem-synth", devices=2)
    with pytest.raises(UserError, match="load_results: folder not found"):
        sb.load_results("/no/such/folder")


@pytest.mark.parametrize("name", ["patchcore", "semclip"])
def test_load_method_reproduces_the_sweep_episode(api_run, data: Path, name: str) -> None:
    """fit/predict on an episode's support and query give the sweep's iAUROC for that episode."""
    _, rows = api_run
    episode = make_episode(load_dataset(data), "line_space", 1, 0)
    support = [*episode.normal_support, *episode.defect_support_flat]
    method = sb.load_method(name, backbone="semclip-tiny", training=FAST["semclip"]["training"])
    method.fit(
        [s.image_path for s in support],
        [s.label for s in support],
        masks=[s.mask_path for s in support],
    )
    prediction = method.predict([s.image_path for s in episode.query])
    labels = np.array([int(s.is_anomalous) for s in episode.query])
    metrics = evaluate(prediction.scores, labels)
    row = rows.set_index("variant").loc[name]
    assert metrics["iAUROC"] == pytest.approx(row["iAUROC"], abs=1e-9)
    assert prediction.maps.shape == (len(episode.query), 64, 64)
    if name == "semclip":
        assert prediction.class_names == episode.class_names
        assert prediction.class_probs.shape == (len(episode.query), 3)
        assert np.allclose(prediction.class_probs.sum(axis=1), 1.0, atol=1e-5)
        assert len(prediction.to_frame().columns) == 2 + 3
    else:
        assert prediction.class_probs is None and prediction.predicted_class is None


def test_inputs_of_any_kind_read_like_files(data: Path) -> None:
    """Paths, 8-bit and 16-bit arrays, PIL images, CHW tensors, float images: same scores."""
    from PIL import Image

    from semclip_bench.data.images import read_raw

    folder = data / "line_space"
    normal = sorted((folder / "train" / "good").glob("*.png"))
    queries = sorted((folder / "test").glob("*/*.png"))
    method = sb.load_method("patchcore", backbone="semclip-tiny").fit(normal, ["good"] * 4)
    reference = method.predict(queries).scores
    raw = [read_raw(p) for p in queries]  # uint8 (H, W)
    as_16bit = [r.astype(np.uint16) * 257 for r in raw]  # same brightness in 16 bits
    variants = {
        "uint8 arrays": raw,
        "uint16 arrays": as_16bit,
        "uint8 batch": np.stack(raw),
        "RGB arrays": [np.repeat(r[:, :, None], 3, axis=2) for r in raw],
        "PIL 8-bit": [Image.open(p) for p in queries],
        "PIL 16-bit": [Image.fromarray(a) for a in as_16bit],
        "float CHW tensors": [torch.from_numpy(r / 255.0)[None].float() for r in raw],
    }
    for kind, images in variants.items():
        assert np.allclose(method.predict(images).scores, reference, atol=1e-4), kind
    with pytest.raises(UserError, match=r"float images must be scaled to \[0, 1\]"):
        method.predict([raw[0].astype(np.float32)])
    with pytest.raises(UserError, match="unsupported pixel type int64"):
        method.predict([raw[0].astype(np.int64)])


def test_fit_rules_and_masks(data: Path) -> None:
    folder = data / "line_space"
    normal = sorted((folder / "train" / "good").glob("*.png"))[:2]
    bridges = sorted((folder / "test" / "bridge").glob("*.png"))[:2]
    masks = [None, None, folder / "ground_truth" / "bridge" / f"{bridges[0].stem}_mask.png", None]
    with pytest.raises(UserError, match=r"patchcore: call fit\(images, labels\) before"):
        sb.load_method("patchcore", backbone="semclip-tiny").predict(bridges)
    method = sb.load_method("semclip", backbone="semclip-tiny", training={"epochs": 1})
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # a notebook's default (earlier runs turned it on)
    try:
        method.fit(normal + bridges, ["good", "good", "bridge", "bridge"], masks=masks)
        assert not torch.are_deterministic_algorithms_enabled()  # the notebook's setting is kept
    finally:
        torch.use_deterministic_algorithms(before)
    assert method.class_names == ("good", "bridge")
    assert method.predict(bridges).predicted_class is not None
    with pytest.raises(UserError, match="3 labels for 4 images"):
        method.fit(normal + bridges, ["good", "good", "bridge"])
    with pytest.raises(UserError, match=r"labels \['hole'\] are not in class_names"):
        method.fit(normal, ["good", "hole"], class_names=("good", "bridge"))
    with pytest.raises(UserError, match="integer labels other than 0/1 need class_names"):
        method.fit(normal, [0, 2])
    with pytest.raises(UserError, match="method 'semclip': semclip option sigma must be >= 0"):
        sb.load_method("semclip", backbone="semclip-tiny", sigma=-1)
    # A zero-shot method predicts without fit.
    zero_shot = sb.load_method("winclip", backbone="semclip-tiny").predict(bridges)
    assert zero_shot.scores.shape == (2,)


def test_plot_maps_returns_a_figure(data: Path, tmp_path: Path) -> None:
    folder = data / "line_space"
    queries = sorted((folder / "test" / "bridge").glob("*.png"))
    masks = [folder / "ground_truth" / "bridge" / f"{q.stem}_mask.png" for q in queries]
    method = sb.load_method("patchcore", backbone="semclip-tiny")
    prediction = method.fit(sorted((folder / "train" / "good").glob("*.png")), ["good"] * 4)
    prediction = method.predict(queries)
    figure = sb.plot_maps(queries, prediction, masks=masks, columns=2)
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert len(panels) == 3 and panels[0].get_title().startswith("score ")
    # The true label and the predicted class are named apart, so a prediction never reads as
    # the truth.
    classifier = sb.load_method("linear_probe", backbone="semclip-tiny")
    normal = sorted((folder / "train" / "good").glob("*.png"))
    classifier.fit(normal + queries[:2], ["good"] * len(normal) + ["bridge"] * 2)
    labelled = sb.plot_maps(queries, classifier.predict(queries), labels=["bridge"] * 3)
    title = next(ax.get_title() for ax in labelled.axes if ax.get_title())
    assert title.startswith("true bridge | pred ") and " | score " in title
    figure.savefig(tmp_path / "maps.png")
    assert (tmp_path / "maps.png").stat().st_size > 0
    with pytest.raises(UserError, match="3 images but maps of shape"):
        sb.plot_maps(queries, prediction.maps[:2])


def _readme_example() -> str:
    text = (CHECKOUT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "README.md should hold exactly one python example"
    return blocks[0]


def test_readme_example_runs(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs README.md's python block as written, with these argument substitutions only: the
    tiny dataset for the example path, fewer shots and seeds, and the tiny backbone (fast)."""
    code = _readme_example()
    substitutions = [
        ('data = "path/to/my_sem_images"', f"data = {str(data)!r}"),
        ("shots=[1, 5], seeds=[0, 1, 2]", "shots=[1], seeds=[0]"),
        ('out="runs/mine"', f'out="runs/mine", method_overrides={FAST!r}, **{TINY!r}'),
        ('sb.load_method("semclip")', 'sb.load_method("semclip", backbone="semclip-tiny")'),
    ]
    for old, new in substitutions:
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(namespace["rows"]) == 2 and (tmp_path / "runs" / "mine" / "sweep.md").is_file()
    assert namespace["prediction"].scores.shape == (len(namespace["queries"]),)
    # The maps can be judged: normal and defect queries, every defect query with its mask.
    truth, query_masks = namespace["truth"], namespace["query_masks"]
    assert "good" in truth and set(truth) - {"good"}
    assert [m is None for m in query_masks] == [t == "good" for t in truth]
    assert all(Path(m).is_file() for m in [*query_masks, *namespace["masks"]] if m is not None)
    assert (tmp_path / "maps.png").stat().st_size > 0


def test_load_method_takes_every_name_the_cli_takes(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Named variants, plugins and variant files of a config folder, as --methods resolves them."""
    from semclip_bench import models
    from semclip_bench.runner.plan.config import load_variant

    plus = sb.load_method("semclip_plus", backbone="semclip-tiny", training={"epochs": 1})
    assert plus.name == "semclip_plus" and plus.method_class.name == "semclip"
    assert plus.options == load_variant("semclip_plus").options != load_variant("semclip").options
    assert plus.training["epochs"] == 1
    normal = sorted((data / "line_space" / "train" / "good").glob("*.png"))[:2]
    bridges = sorted((data / "line_space" / "test" / "bridge").glob("*.png"))[:2]
    plus.fit(normal + bridges, ["good", "good", "bridge", "bridge"])
    assert plus.predict(bridges).scores.shape == (2,)

    plugin = Path(__file__).parent / "plugins" / "semclip_bench_example_plugin"
    monkeypatch.syspath_prepend(str(plugin))
    target = "semclip_bench_example_plugin:MeanPatchDistance"
    monkeypatch.setitem(models.PLUGINS, "mean_patch", (target, "test-dist"))
    monkeypatch.setitem(models.METHODS, "mean_patch", target)
    assert sb.load_method("mean_patch", backbone="semclip-tiny").method_class.name == "mean_patch"

    folder = tmp_path / "configs"
    (folder / "methods").mkdir(parents=True)
    (folder / "methods" / "wide_patchcore.yaml").write_text(
        "method: patchcore\nbase: patchcore\noptions: {num_neighbors: 3}\n"
    )
    mine = sb.load_method("wide_patchcore", backbone="semclip-tiny", config_dir=folder)
    assert mine.method_class.name == "patchcore" and mine.options["num_neighbors"] == 3


def test_load_method_unknown_name_lists_every_accepted_name() -> None:
    from semclip_bench.runner.plan.config import available_variants

    with pytest.raises(UserError) as error:
        sb.load_method("semclip_pluss", backbone="semclip-tiny")
    message = str(error.value)
    assert message.startswith("load_method('semclip_pluss'): unknown method or variant")
    assert "--methods" not in message and "\n" not in message
    listed = message.split("choose from ")[1].split(", ")
    assert listed == available_variants() and "semclip_plus" in listed
