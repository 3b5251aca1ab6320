"""Image-similarity measures the published personalized-generation systems report: SSIM between two
images and the Fréchet distance between two sets of image features.

    structural_similarity(x, y)          # x, y: float [B, C, H, W] in [0, 1] -> float [B]
    similarity_of_statistics(LocalStatistics.of(x), LocalStatistics.of(y))   # the same, each side's
                                         # window statistics computed once for many pairs
    frechet_distance(a, b)               # a: [N, d], b: [M, d] features -> float (FID in that space)
    grayscale_tensor(image, (w, h))      # a PIL image as float [1, h, w] in [0, 1]

Written here rather than taken from torchmetrics (in uv.lock only through lightning, not a
dependency of pmg): SSIM is one convolution, the Fréchet distance one eigendecomposition.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = ["SSIM_SIGMA", "SSIM_WINDOW", "LocalStatistics", "frechet_distance", "gaussian_window", "grayscale_tensor",
           "similarity_of_statistics", "structural_similarity"]

# Wang et al. (2004): an 11×11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-d Gaussian window: float32 [size], summing to 1 (the 2-d window is its outer product)."""
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-(offsets**2) / (2 * sigma**2))
    return line / line.sum()


@functools.lru_cache(maxsize=8)
def _window_matrix(length: int, size: int) -> torch.Tensor:
    """Valid filtering by the SSIM Gaussian window of ``size`` of a signal of ``length``, as a
    matrix: float32 [length - size + 1, length] (row r holds the window at offsets r..r+size-1)."""
    window = gaussian_window(size, SSIM_SIGMA)
    rows = torch.zeros(length - size + 1, length)
    for start in range(length - size + 1):
        rows[start, start : start + size] = window
    return rows


def _local_mean(images: torch.Tensor) -> torch.Tensor:
    """Gaussian-window means at every window position inside ``images`` [B, C, H, W]: [B, C, H - s + 1, W - s + 1]."""
    height, width = images.shape[2:]
    size = min(SSIM_WINDOW, height, width)
    size -= 1 - size % 2  # odd, so the window has a centre
    # The Gaussian is separable: filtering is rows @ image @ columns.T, a batched matmul, which on CPU
    # is several times faster than conv2d with an 11×11 kernel.
    rows, columns = _window_matrix(height, size).to(images.device), _window_matrix(width, size).to(images.device)
    return rows @ images @ columns.T


@dataclass
class LocalStatistics:
    """What SSIM needs of one side of the pairs, computable once for many pairs: ``images``
    float [B, C, H, W], their Gaussian-window ``mean`` and ``mean_square`` [B, C, H', W']."""

    images: torch.Tensor
    mean: torch.Tensor
    mean_square: torch.Tensor

    @classmethod
    def of(cls, images: torch.Tensor) -> LocalStatistics:
        if images.dim() != 4:
            raise ValueError(f"LocalStatistics needs [B, C, H, W] images, got {tuple(images.shape)}")
        images = images.float()
        return cls(images, _local_mean(images), _local_mean(images * images))

    def select(self, rows: torch.Tensor | slice) -> LocalStatistics:
        """The statistics of images ``rows`` (an index tensor [B'] or a slice)."""
        return LocalStatistics(self.images[rows], self.mean[rows], self.mean_square[rows])


def similarity_of_statistics(x: LocalStatistics, y: LocalStatistics, data_range: float = 1.0) -> torch.Tensor:
    """:func:`structural_similarity` of the pairs (x[b], y[b]) from their statistics: float [B]."""
    if x.images.shape != y.images.shape:
        raise ValueError(f"SSIM needs pairs of one shape, got {tuple(x.images.shape)}, {tuple(y.images.shape)}")
    covariance = _local_mean(x.images * y.images) - x.mean * y.mean
    var_x, var_y = x.mean_square - x.mean**2, y.mean_square - y.mean**2
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    ssim_map = ((2 * x.mean * y.mean + c1) * (2 * covariance + c2)) / ((x.mean**2 + y.mean**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


def structural_similarity(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each image pair: ``x``, ``y`` float [B, C, H, W] (values in [0, data_range]) → float [B].

    The standard Gaussian-window SSIM (window 11, sigma 1.5; a smaller odd window on images under
    11 pixels a side), computed per channel over the window positions inside the image (no
    padding, as scikit-image; torchmetrics also averages reflection-padded border windows) and
    averaged over positions and channels. 1 for identical images; in [-1, 1].
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"structural_similarity needs two [B, C, H, W] tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    return similarity_of_statistics(LocalStatistics.of(x), LocalStatistics.of(y), data_range)


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
