"""A minimal training loop for quantizers on a fixed set of embeddings."""

from __future__ import annotations

import torch

from ._arrays import TensorOrArray, to_tensor
from .quantizer import ResidualQuantizer, VectorQuantizer

__all__ = ["fit_quantizer"]


def fit_quantizer(
    quantizer: VectorQuantizer | ResidualQuantizer,
    embeddings: TensorOrArray,
    *,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Train ``quantizer`` on embeddings [N, d] for a few epochs of shuffled mini-batches.

    EMA codebooks need no optimizer; learned codebooks get an Adam optimizer with ``lr``.
    The loop runs under a forked RNG seeded with ``seed``, so the result is reproducible
    and the caller's global random state is left untouched. The quantizer is left in
    eval mode.

    Returns:
        One dict per epoch: mean ``loss``, mean ``recon_mse`` and the smallest per-level
        code ``usage`` over the epoch's batches, and the number of ``restarted`` codes.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    embeddings = to_tensor(embeddings, "embeddings")
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must have shape [N, d] with N > 0, got {list(embeddings.shape)}")
    params = [p for p in quantizer.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr) if params else None
    devices = [embeddings.device] if embeddings.device.type == "cuda" else []
    history: list[dict[str, float]] = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        quantizer.train()
        for _ in range(epochs):
            order = torch.randperm(embeddings.shape[0], device=embeddings.device)
            losses, mses, usage_min, restarted = [], [], 1.0, 0
            for index in order.split(batch_size):
                out = quantizer(embeddings[index])
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    optimizer.step()
                losses.append(float(out.loss.detach()))
                mses.append(float(out.stats.recon_mse))
                usage_min = min(usage_min, float(out.stats.usage.min()))
                restarted += int(out.stats.restarted_codes.sum())
            history.append(
                {
                    "loss": sum(losses) / len(losses),
                    "recon_mse": sum(mses) / len(mses),
                    "usage_min": usage_min,
                    "restarted": float(restarted),
                }
            )
    quantizer.eval()
    return history
