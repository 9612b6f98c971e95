"""Tensors for the models: transforms, a dataset of samples, and an episode's data module.

Transform (albumentations): a 1-channel image is repeated to 3 channels; the image is resized to
the backbone's square input size (area interpolation when shrinking, bilinear when enlarging) and
its mask with nearest neighbour; optional support augmentation; normalisation with the backbone's
mean/std (images are already in [0, 1]); conversion to contiguous float32 tensors.
Sizes are always (H, W).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

# albumentations asks PyPI for a newer version on import (a network call, slow offline).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from semclip_bench.data.images import read_image, read_mask
from semclip_bench.data.types import Episode, Sample
from semclip_bench.errors import UserError


def _size_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def support_augmentations() -> list[A.BasicTransform]:
    """Label-preserving augmentations for support images of trainable methods.

    Flips and 90-degree rotations (SEM patterns have no preferred orientation of defects),
    mild brightness/contrast changes (imaging conditions) and Gaussian noise (SEM shot noise).
    Applied to images in [0, 1] before normalisation; masks follow the geometric ones.
    """
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.3),
    ]


class SampleTransform:
    """(image float (H, W, C) in [0, 1], mask bool (H, W)) -> (image (3, S, S), mask (S, S)).

    ``image_size`` is an int (square) or ``(height, width)``. With ``augment``, the support
    augmentations are drawn from albumentations' own generator seeded with ``seed``.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        seed: int | None = 0,
    ) -> None:
        height, width = _size_hw(image_size)
        self.size = (height, width)
        steps: list[A.BasicTransform] = [
            A.Resize(
                height,
                width,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                area_for_downscale="image",
            )
        ]
        if augment:
            steps += support_augmentations()
        steps.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=1.0))
        self.augment = augment
        self.pipeline = A.Compose(steps, seed=seed)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation stream (e.g. per DataLoader worker)."""
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
        out = self.pipeline(image=image, mask=mask.astype(np.uint8))
        # To tensors in numpy (a torch dtype conversion spins up its thread pool per call,
        # which costs milliseconds on a busy machine); CHW made contiguous for batching.
        image_chw = np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32)
        mask_f = (out["mask"] > 0).astype(np.float32)
        return torch.from_numpy(image_chw), torch.from_numpy(mask_f)


class SampleDataset(Dataset):
    """Samples as model inputs.

    Items: ``{"image": float (3, S, S) normalised, "mask": float (S, S) in {0, 1} (zeros for
    images without a mask), "label": int class id into class_names (0 = good; -1 if the label is
    not in class_names), "path": str}``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_names: Sequence[str],
        image_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.class_names = tuple(class_names)
        index = {name: i for i, name in enumerate(self.class_names)}
        # -1 marks a label outside class_names (allowed when only images are needed, e.g. for
        # feature extraction); it makes any loss that uses it fail loudly.
        self.labels = [index.get(s.label, -1) for s in self.samples]
        self.seed = seed
        self.transform = SampleTransform(image_size, mean, std, augment=augment, seed=seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        image = read_image(sample.image_path)
        height, width = image.shape[:2]
        if sample.mask_path is not None:
            mask = read_mask(sample.mask_path)
            if mask.shape != (height, width):
                raise UserError(
                    f"{sample.mask_path}: mask size {mask.shape[0]}x{mask.shape[1]} (HxW) "
                    f"differs from its image {sample.image_path} ({height}x{width})"
                )
        else:
            mask = np.zeros((height, width), dtype=bool)
        image_t, mask_t = self.transform(image, mask)
        return {"image": image_t, "mask": mask_t, "label": self.labels[i], "path": str(sample.key)}


def _seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream.

    ``info.seed`` is the loader's per-epoch base seed (drawn from the loader's seeded generator)
    plus the worker id: reproducible, different per worker and per epoch.
    """
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, SampleDataset):
        info.dataset.transform.reseed(int(info.seed) % 2**32)


class EpisodeDataModule(L.LightningDataModule):
    """Support and query sets of one :class:`Episode` as data loaders.

    ``support_dataloader`` (normal support then defect support, in order, no shuffling; used to
    extract support features) and ``query_dataloader`` (the query in order). For Lightning:
    ``train_dataloader`` is the support set shuffled with a generator seeded by the episode seed,
    ``predict_dataloader`` is the query set. ``augment_support`` enables the seeded support
    augmentation (for trainable methods).
    """

    def __init__(
        self,
        episode: Episode,
        image_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 16,
        num_workers: int = 0,
        augment_support: bool = False,
    ) -> None:
        super().__init__()
        if episode.skipped:
            raise ValueError(f"episode is skipped: {episode.skipped}")
        self.episode = episode
        self.batch_size = batch_size
        self.num_workers = num_workers
        support = [*episode.normal_support, *episode.defect_support_flat]
        self.support = SampleDataset(
            support, episode.class_names, image_size, mean, std, augment_support, episode.seed
        )
        self.query = SampleDataset(
            episode.query, episode.class_names, image_size, mean, std, False, episode.seed
        )

    def _loader(self, dataset: SampleDataset, shuffle: bool) -> DataLoader:
        shuffle = shuffle and len(dataset) > 0  # a zero-shot episode has an empty support set
        # Seeded even without shuffling: it also sets the workers' base seeds.
        generator = torch.Generator().manual_seed(self.episode.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            worker_init_fn=_seed_worker if self.num_workers > 0 else None,
            persistent_workers=False,
        )

    def support_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader(self.support, shuffle)

    def query_dataloader(self) -> DataLoader:
        return self._loader(self.query, False)

    def train_dataloader(self) -> DataLoader:
        return self.support_dataloader(shuffle=True)

    def predict_dataloader(self) -> DataLoader:
        return self.query_dataloader()
