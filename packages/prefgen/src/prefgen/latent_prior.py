"""A preference-token prior on a diffusion sampler's initial latents.

Textual inversion can only ask the UNet for what its text conditioning can express. A taste that
no caption ever named (a shade, a palette, an overall brightness) the UNet draws as the initial
noise falls: the low frequencies of the starting latents survive the sampler (the noise schedule
never reaches zero signal), so their per-channel means steer the image's overall tone. A
:class:`LatentPrior` gives each preference token an offset of those means, [C], and a prompt's
offset is ``scale`` times the sum of the rows of the tokens it holds (residual codes add up, as
their vectors do in the quantizer).

:func:`fit_latent_prior` fits the rows by ridge regression: from which tokens each user has to the
mean latent of the images the user liked, centred on the mean over users, so that a prompt
without tokens keeps the pipeline's own noise. ``scale`` is left to the caller to choose on users
held out of the fit (how far to push differs between pipelines).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from prefgen.token_rows import AdapterFileError, check_safetensors_file

__all__ = ["LATENT_PRIOR_FILE", "LatentPrior", "fit_latent_prior"]

LATENT_PRIOR_FILE = "latent_prior.safetensors"
_ROWS_KEY = "rows"


@dataclass
class LatentPrior:
    """Per-token offsets of the initial latents' channel means.

    Attributes:
        rows: float32 [N, C], one row per preference token (the adapter's token order), C the UNet's
            latent channels.
        scale: how many times the summed rows are added to the unit-variance initial noise (0: off).
    """

    rows: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.rows.ndim != 2:
            raise ValueError(f"latent prior rows must be [N, C], got {tuple(self.rows.shape)}")
        if not self.scale >= 0.0:
            raise ValueError(f"latent prior scale must be >= 0, got {self.scale}")
        self.rows = self.rows.detach().to("cpu", torch.float32).contiguous()

    @property
    def num_tokens(self) -> int:
        return int(self.rows.shape[0])

    @property
    def channels(self) -> int:
        return int(self.rows.shape[1])

    def offsets(self, token_counts: torch.Tensor) -> torch.Tensor:
        """Offsets [B, C] for prompts holding ``token_counts`` [B, N] of each token."""
        if token_counts.ndim != 2 or token_counts.shape[1] != self.num_tokens:
            raise ValueError(f"token_counts must be [B, {self.num_tokens}], got {tuple(token_counts.shape)}")
        return self.scale * token_counts.to(self.rows) @ self.rows

    def save(self, path: str | Path) -> Path:
        """One safetensors file: tensor ``rows`` [N, C], the scale in its metadata."""
        path = Path(path)
        save_file({_ROWS_KEY: self.rows}, str(path), metadata={"scale": repr(float(self.scale))})
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatentPrior:
        """Read a file written by :meth:`save`; :class:`AdapterFileError` names what is wrong with it."""
        path = Path(path)
        if _ROWS_KEY not in check_safetensors_file(path):
            raise AdapterFileError(f"latent prior file {path} has no tensor {_ROWS_KEY!r}")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        try:
            scale = float(metadata["scale"])
        except (KeyError, ValueError) as err:
            raise AdapterFileError(f"latent prior file {path} has no readable 'scale' in its metadata") from err
        try:
            return cls(load_file(str(path))[_ROWS_KEY], scale)
        except ValueError as err:
            raise AdapterFileError(f"latent prior file {path}: {err}") from err


def fit_latent_prior(token_counts: torch.Tensor, targets: torch.Tensor, *, ridge: float = 1.0, scale: float = 1.0,
                     rank: int | None = None) -> LatentPrior:
    """Ridge regression of centred per-user latent means on the users' tokens.

    Args:
        token_counts: [U, N], how many times each of the N preference tokens is in user u's prompt
            (one per quantizer level: a one-hot per level).
        targets: [U, C], the mean (over the user's liked images) of their latents' channel means.
        ridge: the L2 penalty on the rows; it shrinks the rows of rarely used tokens towards 0.
        scale: the prior's :attr:`LatentPrior.scale`.
        rank: keep only the ``rank`` latent directions along which the fitted offsets of these users
            vary most (the top right singular vectors of X W); None keeps all C. What the tokens
            predict weakly spreads thin over the other directions, and pushing the noise there
            costs the image what its prompt asks for.

    Returns:
        the prior whose rows W [N, C] minimise ||X W - (Y - mean(Y))||² + ridge ||W||², projected
        onto its ``rank`` main directions.
    """
    if token_counts.ndim != 2 or targets.ndim != 2 or token_counts.shape[0] != targets.shape[0]:
        raise ValueError(f"token_counts [U, N] and targets [U, C] must have the same U, got "
                         f"{tuple(token_counts.shape)} and {tuple(targets.shape)}")
    if token_counts.shape[0] == 0:
        raise ValueError("no users to fit a latent prior on")
    if not ridge > 0.0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be >= 1 (None: every latent channel), got {rank}")
    x = token_counts.double()
    y = targets.double()
    y = y - y.mean(dim=0, keepdim=True)
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=torch.float64)
    rows = torch.linalg.solve(gram, x.T @ y)
    if rank is not None and rank < rows.shape[1]:
        fitted = x @ rows
        _, _, directions = torch.linalg.svd(fitted - fitted.mean(dim=0, keepdim=True), full_matrices=False)  # [C, C]
        kept = directions[:rank]  # [rank, C]
        rows = rows @ kept.T @ kept
    return LatentPrior(rows.float(), scale)
