"""Reading images and masks from disk, scaled by their bit depth.

SEM images are usually grayscale and often 16-bit; both must survive loading unchanged. Images are
decoded with OpenCV (``IMREAD_UNCHANGED``, so 16-bit and 1-channel data are kept as stored), BGR is
turned into RGB, an alpha channel is dropped, and the values are divided by the largest value of the
storage type (255 for 8-bit, 65535 for 16-bit) -- never by the image's own maximum, so brightness
differences between images are preserved. A 1-channel image stays 1-channel here; the transform
(:mod:`semclip_bench.data.datamodule`) repeats it to 3 channels for RGB models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from semclip_bench.errors import UserError

#: File name suffixes read as images (lower case).
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"})

#: Bit depth of each supported storage type.
_BIT_DEPTHS: dict[np.dtype, int] = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}


@dataclass(frozen=True)
class ImageInfo:
    """What ``data check`` reports about one image file."""

    height: int
    width: int
    channels: int  # after dropping alpha
    bit_depth: int
    max_value: int  # largest stored value (reveals 12-bit data in 16-bit files)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names a (non-hidden) file with an image suffix."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_raw(path: str | Path) -> np.ndarray:
    """Decode an image as stored: uint8/uint16, (H, W) or (H, W, C) RGB order, alpha removed.

    Raises :class:`UserError` naming the file when it is missing, unreadable, truncated or of an
    unsupported type (anything but 8- or 16-bit unsigned integers).
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: handles non-ASCII paths
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read image file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise UserError(f"{path}: image file is empty")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise UserError(f"{path}: cannot decode image (unreadable, truncated or not an image)")
    if image.dtype not in _BIT_DEPTHS:
        raise UserError(
            f"{path}: unsupported pixel type {image.dtype} "
            "(expected 8- or 16-bit unsigned integers)"
        )
    if image.ndim == 3:
        channels = image.shape[2]
        if channels in (1, 2):  # gray, or gray + alpha
            image = image[:, :, 0]
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        else:
            raise UserError(f"{path}: unsupported number of channels ({channels})")
    elif image.ndim != 2:
        raise UserError(f"{path}: unsupported image shape {image.shape}")
    return np.ascontiguousarray(image)


def bit_depth(image: np.ndarray) -> int:
    """Bit depth of a raw image's storage type (8 or 16)."""
    return _BIT_DEPTHS[image.dtype]


def image_info(path: str | Path) -> ImageInfo:
    """Size, channels and bit depth of an image file (decodes it, so it also verifies it)."""
    raw = read_raw(path)
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    return ImageInfo(
        int(raw.shape[0]), int(raw.shape[1]), int(channels), bit_depth(raw), int(raw.max())
    )


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file read from its header only (Pillow opens files lazily), for the
    check of a whole dataset before a run (:func:`semclip_bench.data.check.check_headers`).

    Where Pillow cannot read the header (a format it lacks, a broken or empty file), the file is
    decoded as :func:`read_raw` does, so a bad file raises the same :class:`UserError`
    naming it as when a run reads it. A header that reads but whose pixel data is truncated is
    found only by decoding (``data check``).
    """
    import warnings

    from PIL import Image

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. Pillow's warning about very large images
            with Image.open(path) as image:
                width, height = image.size
        return int(height), int(width)
    except Exception:  # any header Pillow cannot read: decode, which says why
        raw = read_raw(path)
        return int(raw.shape[0]), int(raw.shape[1])


def to_float(raw: np.ndarray) -> np.ndarray:
    """Scale a raw uint8/uint16 image to float32 [0, 1] by its type's range; always (H, W, C)."""
    scale = float(np.iinfo(raw.dtype).max)
    image = raw.astype(np.float32) / np.float32(scale)
    if image.ndim == 2:
        image = image[:, :, None]
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as float32 (H, W, C) in [0, 1], C = 1 or 3, scaled by its bit depth."""
    return to_float(read_raw(path))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a defect mask as bool (H, W): a pixel is defective where any channel is nonzero."""
    raw = read_raw(path)
    if raw.ndim == 3:
        return np.any(raw != 0, axis=2)
    return raw != 0


# --------------------------------------------------------------------------------------------
# In-memory images (the Python API): the same scaling as for files


def _plain_array(image: object) -> np.ndarray:
    """A numpy array of a numpy array, torch tensor (CHW -> HWC) or PIL image (16-bit kept)."""
    if hasattr(image, "getbands") and hasattr(image, "mode"):  # a PIL image, without importing PIL
        mode = str(image.mode)
        if mode.startswith("I;16"):
            return np.asarray(image).astype(np.uint16)
        if mode == "I":  # Pillow's mode for some 16-bit files: 32-bit ints holding 16-bit values
            array = np.asarray(image)
            if array.size and (array.min() < 0 or array.max() > 65535):
                raise UserError(f"PIL image of mode I with values outside 0..65535: {image}")
            return array.astype(np.uint16)
        if mode not in {"1", "L", "LA", "RGB", "RGBA", "F"}:
            image = image.convert("RGB")  # type: ignore[attr-defined]
        return np.asarray(image)
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # a torch tensor
        array = image.detach().cpu().numpy()  # type: ignore[attr-defined]
        if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[2] > 4:
            array = array.transpose(1, 2, 0)  # torch's (C, H, W)
        return array
    return np.asarray(image)


def as_image(image: object) -> np.ndarray:
    """An image given as a file path, numpy array, torch tensor or PIL image, as float32
    (H, W, C) in [0, 1] with C = 1 or 3 -- what :func:`read_image` returns for a file.

    Integer images are scaled by their bit depth (uint8 by 255, uint16 by 65535; never by their own
    maximum); float images must already lie in [0, 1]. Layouts: (H, W) or (H, W, C) with C = 1, 2
    (gray + alpha), 3 (RGB) or 4 (RGBA; alpha dropped); tensors may also be (C, H, W). Anything
    else is a :class:`UserError` saying what was given.
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    array = _plain_array(image)
    if array.ndim == 3 and array.shape[2] in (1, 2, 3, 4):
        array = array[:, :, :1] if array.shape[2] in (1, 2) else array[:, :, :3]
    elif array.ndim != 2:
        raise UserError(
            f"image of shape {tuple(array.shape)}: expected (H, W) or (H, W, C) with C in 1..4"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype in _BIT_DEPTHS:
        return to_float(np.ascontiguousarray(array))
    if np.issubdtype(array.dtype, np.floating):
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            raise UserError(
                f"float image with values in [{low:g}, {high:g}]: float images must be scaled to "
                "[0, 1] (or pass the raw uint8/uint16 array, scaled by its bit depth)"
            )
        image_f = np.ascontiguousarray(array, dtype=np.float32)
        return image_f[:, :, None] if image_f.ndim == 2 else image_f
    raise UserError(
        f"unsupported pixel type {array.dtype} (expected uint8, uint16, bool or float in [0, 1])"
    )


def as_mask(mask: object) -> np.ndarray:
    """A mask given as a file path, array, tensor or PIL image as bool (H, W): nonzero = defect."""
    if isinstance(mask, (str, Path)):
        return read_mask(mask)
    array = _plain_array(mask)
    if array.ndim == 3:
        array = np.any(array != 0, axis=2)
    if array.ndim != 2:
        raise UserError(f"mask of shape {tuple(array.shape)}: expected (H, W)")
    return array != 0
