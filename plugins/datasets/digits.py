"""scikit-learn's bundled 8x8 handwritten digits as 32x32 images: offline real image data."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SIZE = 32


@functools.cache
def load_digits_32() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as uint8 (N, 1, 32, 32) images (bilinear upsampling) and labels (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    large = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (large.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, torch.as_tensor(bunch.target, dtype=torch.long)
