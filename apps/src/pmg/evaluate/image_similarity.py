"""Image-similarity measures the published personalized-generation systems report: SSIM between two
images and the Fréchet distance between two sets of image features.

    structural_similarity(x, y)          # x, y: float [B, C, H, W] in [0, 1] -> float [B]
    frechet_distance(a, b)               # a: [N, d], b: [M, d] features -> float (FID in that space)
    grayscale_tensor(image, (w, h))      # a PIL image as float [1, h, w] in [0, 1]

Written here rather than taken from torchmetrics (in uv.lock only through lightning, not a
dependency of pmg): SSIM is one convolution, the Fréchet distance one eigendecomposition.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["SSIM_SIGMA", "SSIM_WINDOW", "frechet_distance", "gaussian_window", "grayscale_tensor", "structural_similarity"]

# Wang et al. (2004): an 11×11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """The normalised 2-d Gaussian window: float32 [size, size], summing to 1."""
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-(offsets**2) / (2 * sigma**2))
    line = line / line.sum()
    return line[:, None] * line[None, :]


def structural_similarity(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each image pair: ``x``, ``y`` float [B, C, H, W] (values in [0, data_range]) → float [B].

    The standard Gaussian-window SSIM (window 11, sigma 1.5; a smaller odd window on images under
    11 pixels a side), computed per channel over the window positions inside the image (no
    padding, as scikit-image; torchmetrics also averages reflection-padded border windows) and
    averaged over positions and channels. 1 for identical images; in [-1, 1].
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"structural_similarity needs two [B, C, H, W] tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    channels, height, width = x.shape[1:]
    size = min(SSIM_WINDOW, height, width)
    size -= 1 - size % 2  # odd, so the window has a centre
    window = gaussian_window(size, SSIM_SIGMA).to(x)[None, None].expand(channels, 1, size, size)

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, window, groups=channels)

    x, y = x.float(), y.float()
    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mean_x**2
    var_y = local_mean(y * y) - mean_y**2
    covariance = local_mean(x * y) - mean_x * mean_y
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


def grayscale_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """``image`` resized (bicubic) to ``size`` (width, height) and converted to luma (ITU-R 601, as
    PIL's "L" mode): float32 [1, height, width] in [0, 1]."""
    resized = image.convert("RGB")
    if resized.size != size:
        resized = resized.resize(size, Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(resized.convert("L"), dtype=np.float32) / 255.0)[None]


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix [d, d] (negative
    eigenvalues from rounding clipped to 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to feature sets ``a`` [N, d] and ``b`` [M, d]
    (N, M >= 2): ‖μa − μb‖² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½ (FID in that feature space).

    Covariances are the unbiased sample ones; with N or M <= d they are singular, which the
    formula allows (the distance stays defined and >= 0) but which makes it a noisy estimate:
    pick a feature space with d well under the number of images.
    """
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    if a64.ndim != 2 or b64.ndim != 2 or a64.shape[1] != b64.shape[1] or len(a64) < 2 or len(b64) < 2:
        raise ValueError(f"frechet_distance needs two [N >= 2, d] feature sets of one d, got {a64.shape}, {b64.shape}")
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    root_a = _sqrt_psd(cov_a)
    product = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0.0, None)).sum()
    shift = float(((a64.mean(axis=0) - b64.mean(axis=0)) ** 2).sum())
    return max(shift + float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross), 0.0)
