"""The scikit-learn digits as a DiP data set, and the classifier that scores generated digits.

Transform (fixed, so that quality is measurable): each 8x8 digit is upsampled bilinearly to fill
the whole SxS frame (no padding, no shift), grayscale is replicated to RGB, ink is bright, and
values map to [-1, 1]. Generated images go back to 8x8 by area averaging and are classified by an
SVC trained on the real digits after the same round trip.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dip_export.errors import MissingDependencyError

NUM_CLASSES = 10


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependencyError("scikit-learn", "pip install scikit-learn") from None
    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)  # (N, 8, 8) in 0..16


def load_digit_images(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) float32 in [-1, 1] and (N,) labels."""
    images, labels = _sklearn_digits()
    x = torch.from_numpy(images / 8.0 - 1.0)[:, None]  # 0..16 -> [-1, 1], ink bright
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels)


def to_8x8(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float (N, 64) on the 0..16 scale of the original digits."""
    x = torch.from_numpy(images).float().mean(-1)[:, None] / 255.0 * 16.0  # (N, 1, S, S)
    return F.adaptive_avg_pool2d(x, 8).flatten(1).numpy()


@functools.lru_cache(maxsize=2)
def digit_classifier(size: int = 32) -> Any:
    """SVC on the real digits, seen through the same upsample -> uint8 -> 8x8 round trip."""
    from sklearn.svm import SVC

    x, labels = load_digit_images(size)
    uint8 = ((x + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return SVC(gamma="scale", C=10.0).fit(to_8x8(uint8), labels.numpy())


def digit_accuracy(images: np.ndarray, classes: np.ndarray | list[int]) -> float:
    """Fraction of generated uint8 images (N, S, S, 3) that the classifier reads as their class."""
    predicted = digit_classifier(images.shape[1]).predict(to_8x8(images))
    return float(np.mean(predicted == np.asarray(classes)))
