"""Transforms, SampleDataset and EpisodeDataModule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from semclip_bench.data import load_dataset, make_episode
from semclip_bench.data.datamodule import EpisodeDataModule, SampleDataset, SampleTransform
from semclip_bench.data.types import Sample
from semclip_bench.errors import UserError

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.5)


def _sample(image: Path, mask: Path | None = None, label: str = "good") -> Sample:
    return Sample(image, "c", "test", label, mask)


def test_non_square_image_and_mask_keep_orientation(tmp_path: Path, write_img: Callable) -> None:
    # 24 x 40 (H x W) image whose left part is bright; mask on the top-left block.
    image = np.zeros((24, 40), np.uint8)
    image[:, :10] = 255
    mask = np.zeros((24, 40), np.uint8)
    mask[0:6, 0:20] = 255
    path = write_img(tmp_path / "img.png", image)
    mask_path = write_img(tmp_path / "img_mask.png", mask)
    data = SampleDataset(
        [_sample(path, mask_path, "bridge")], ("good", "bridge"), 16, (0, 0, 0), (1, 1, 1)
    )
    item = data[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (16, 16) and item["mask"].dtype == torch.float32
    assert item["label"] == 1 and item["path"] == str(path)
    expected = cv2.resize(mask, (16, 16), interpolation=cv2.INTER_NEAREST) > 0
    assert torch.equal(item["mask"], torch.from_numpy(expected).float())
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    # The bright band stays on the left (columns), not on the top (rows).
    assert item["image"][0, :, :3].mean() > 0.9 and item["image"][0, :, -3:].mean() < 0.1


def test_non_square_output_size_is_height_width(tmp_path: Path, write_img: Callable) -> None:
    mask = np.zeros((24, 40), np.uint8)
    mask[:, :20] = 1
    path = write_img(tmp_path / "img.png", np.zeros((24, 40), np.uint8))
    mask_path = write_img(tmp_path / "m.png", mask)
    data = SampleDataset([_sample(path, mask_path)], ("good",), (12, 20), MEAN, STD)
    item = data[0]
    assert item["image"].shape == (3, 12, 20)
    assert item["mask"].shape == (12, 20)
    assert item["mask"][:, :10].all() and not item["mask"][:, 10:].any()


def test_grayscale_repeated_and_normalised(tmp_path: Path, write_img: Callable) -> None:
    raw = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    path = write_img(tmp_path / "gray.png", raw)
    item = SampleDataset([_sample(path)], ("good",), 8, MEAN, STD)[0]
    x = raw / 255.0
    for c in range(3):
        expected = (x - MEAN[c]) / STD[c]
        np.testing.assert_allclose(item["image"][c].numpy(), expected, atol=1e-5)
    assert torch.equal(item["mask"], torch.zeros(8, 8))  # good image without a mask
    assert item["label"] == 0


def test_16bit_and_rgba_inputs(tmp_path: Path, write_img: Callable) -> None:
    path16 = write_img(tmp_path / "a16.tif", np.full((6, 6), 32768, np.uint16))
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[..., 3] = 17
    path_rgba = write_img(tmp_path / "rgba.png", rgba)
    data = SampleDataset([_sample(path16), _sample(path_rgba)], ("good",), 6, (0, 0, 0), (1, 1, 1))
    np.testing.assert_allclose(data[0]["image"].numpy(), 32768 / 65535, atol=1e-6)
    green = data[1]["image"]
    assert green.shape == (3, 6, 6)
    np.testing.assert_allclose(green[:, 0, 0].numpy(), [0.0, 1.0, 0.0], atol=1e-6)


def test_mask_size_mismatch_raises(tmp_path: Path, write_img: Callable) -> None:
    path = write_img(tmp_path / "img.png", np.zeros((10, 12), np.uint8))
    mask_path = write_img(tmp_path / "img_mask.png", np.zeros((12, 10), np.uint8))
    data = SampleDataset([_sample(path, mask_path, "hole")], ("good", "hole"), 8, MEAN, STD)
    with pytest.raises(UserError, match=r"img_mask\.png: mask size 12x10 \(HxW\) differs"):
        data[0]


def test_unknown_label_is_minus_one(tmp_path: Path, write_img: Callable) -> None:
    path = write_img(tmp_path / "img.png", np.zeros((8, 8), np.uint8))
    data = SampleDataset([_sample(path, None, "scratch")], ("good",), 8, MEAN, STD)
    assert data.labels == [-1]


def test_augmentation_seeded_and_mask_follows_image() -> None:
    image = np.zeros((20, 20, 1), np.float32)
    mask = np.zeros((20, 20), bool)
    image[2:8, 3:15] = 1.0
    mask[2:8, 3:15] = True
    runs = []
    for _ in range(2):
        transform = SampleTransform(20, (0, 0, 0), (1, 1, 1), augment=True, seed=5)
        runs.append([transform(image, mask) for _ in range(12)])
    for (img_a, mask_a), (img_b, mask_b) in zip(*runs, strict=True):
        assert torch.equal(img_a, img_b) and torch.equal(mask_a, mask_b)
    changed = 0
    for img, msk in runs[0]:
        inside = img[0][msk.bool()].mean()
        outside = img[0][~msk.bool()].mean()
        assert msk.sum() == mask.sum()  # flips / 90-degree rotations keep the area
        assert inside > outside + 0.5  # the mask still covers the bright block
        changed += int(not torch.equal(msk, torch.from_numpy(mask).float()))
    assert changed > 0  # geometric augmentation did happen
    plain = SampleTransform(20, (0, 0, 0), (1, 1, 1), augment=False)
    img, msk = plain(image, mask)
    assert torch.equal(msk, torch.from_numpy(mask).float())
    assert torch.allclose(img, torch.from_numpy(np.repeat(image, 3, 2)).permute(2, 0, 1))


def test_episode_datamodule(handmade: Callable[..., Path]) -> None:
    dataset = load_dataset(handmade(size_hw=(24, 32)))
    episode = make_episode(dataset, "cat_a", 1, seed=0)
    module = EpisodeDataModule(episode, 16, MEAN, STD, batch_size=2)
    support = list(module.support_dataloader())
    labels = torch.cat([b["label"] for b in support]).tolist()
    assert labels == [0, 1, 2]  # good, bridge, particle (class_names order)
    paths = [p for b in support for p in b["path"]]
    assert paths == [s.key for s in (*episode.normal_support, *episode.defect_support_flat)]
    masks = torch.cat([b["mask"] for b in support])
    assert masks.shape == (3, 16, 16) and masks[0].sum() == 0 and masks[1].sum() > 0
    query = list(module.predict_dataloader())
    assert [p for b in query for p in b["path"]] == [s.key for s in episode.query]
    images = torch.cat([b["image"] for b in query])
    assert images.shape == (len(episode.query), 3, 16, 16)
    shuffled = [p for b in module.train_dataloader() for p in b["path"]]
    assert sorted(shuffled) == sorted(paths)
    assert shuffled == [p for b in module.train_dataloader() for p in b["path"]]  # seeded


def test_skipped_episode_rejected(handmade: Callable[..., Path]) -> None:
    dataset = load_dataset(handmade())
    episode = make_episode(dataset, "cat_a", 3, seed=0)
    assert episode.skipped
    with pytest.raises(ValueError, match="skipped"):
        EpisodeDataModule(episode, 16, MEAN, STD)


def test_zero_shot_episode_has_empty_support_loader(handmade: Callable[..., Path]) -> None:
    dataset = load_dataset(handmade())
    module = EpisodeDataModule(make_episode(dataset, "cat_a", 0, seed=0), 8, MEAN, STD)
    assert list(module.train_dataloader()) == [] and list(module.support_dataloader()) == []
    # 3 good + 3 bridge + 2 particle test images minus one pooled image per defect type
    assert sum(len(b["path"]) for b in module.query_dataloader()) == 6
