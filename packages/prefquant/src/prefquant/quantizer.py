"""Vector and residual quantizers: continuous embeddings [N, d] -> discrete codes [N, L].

Both modules follow one contract:

* ``forward(x)`` (training): quantizes a batch, updates the codebooks when the module is
  in training mode (k-means initialisation on the first batch, EMA updates, dead-code
  restart) and returns a :class:`QuantizerOutput` whose ``quantized`` passes gradients
  straight through to ``x``.
* ``encode(x)`` / ``decode(codes)`` (inference): pure functions of the current codebooks;
  they never update anything, whatever the training mode.

Under ``torch.distributed`` (default process group, more than one rank) every codebook
statistic is summed over ranks, so codebooks stay identical on all ranks without DDP's
help; see :class:`VectorQuantizer` for the details.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._arrays import TensorOrArray, to_tensor
from ._distributed import all_reduce_sum_, broadcast_
from .semantic_ids import append_disambiguation
from .serialization import QuantizerCheckpoint

__all__ = [
    "AssignmentMode",
    "CodebookMode",
    "QuantizerOutput",
    "QuantizerStats",
    "ResidualQuantizer",
    "VectorQuantizer",
]

CodebookMode = Literal["ema", "learned"]
AssignmentMode = Literal["nearest", "sinkhorn"]

# Rows per distance computation in encode(): bounds the [rows, K] distance matrix in memory.
_ENCODE_CHUNK_ROWS = 32768


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _without_autocast(method: _Method) -> _Method:
    """Run ``method(self, tensor, ...)`` with autocast off for the tensor's device.

    Under bf16/fp16 autocast the distance matmul rounds enough to change nearest codes
    and the EMA sums; codebooks stay in their own dtype and inputs are cast to it.
    """

    @functools.wraps(method)
    def wrapper(self: nn.Module, tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
        device_type = tensor.device.type if isinstance(tensor, Tensor) else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return method(self, tensor, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class QuantizerStats:
    """Batch statistics of one forward pass (all detached).

    Attributes:
        usage: [L] fraction of each level's K codes assigned at least once in the batch
            (summed over ranks in distributed training).
        perplexity: [L] exp(entropy) of each level's code distribution in the batch;
            K means perfectly uniform use, 1 means a single code.
        recon_mse: [] mean squared error between the (possibly normalised) input and its
            quantization.
        recon_cos: [] mean cosine similarity between input and quantization.
        restarted_codes: [L] long, number of dead codes re-seeded during this pass.
    """

    usage: Tensor
    perplexity: Tensor
    recon_mse: Tensor
    recon_cos: Tensor
    restarted_codes: Tensor


@dataclass(frozen=True)
class QuantizerOutput:
    """Result of a quantizer's forward pass.

    Attributes:
        quantized: [N, d] quantized vectors; the gradient w.r.t. them is passed straight
            through to the input.
        codes: [N, L] long code indices (L = 1 for :class:`VectorQuantizer`).
        loss: [] commitment loss (plus the codebook loss for learned codebooks), already
            weighted; add it to your training loss.
        stats: usage, perplexity and reconstruction statistics.
    """

    quantized: Tensor
    codes: Tensor
    loss: Tensor
    stats: QuantizerStats


@dataclass(frozen=True)
class _LevelResult:
    quantized: Tensor  # [N, d]; differentiable w.r.t. a learned codebook
    codes: Tensor  # [N]
    loss: Tensor  # []
    counts: Tensor  # [K] float, assignments per code (summed over ranks when training)
    restarted: int


def _check_embeddings(x: TensorOrArray, dim: int, what: str = "x") -> Tensor:
    """``x`` as a float tensor [N, dim] (numpy arrays are wrapped), or a clear error."""
    x = to_tensor(x, what)
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape [N, {dim}], got {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")
    return x


def _check_codes(codes: TensorOrArray, num_levels: int, codebook_size: int) -> Tensor:
    """``codes`` as an integer tensor [N, num_levels] with values in [0, codebook_size), or a clear error."""
    codes = to_tensor(codes, "codes")
    if codes.dim() != 2 or codes.shape[1] != num_levels:
        raise ValueError(f"codes must have shape [N, {num_levels}], got {list(codes.shape)}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(
            f"codes must lie in [0, {codebook_size}), got values in [{int(codes.min())}, {int(codes.max())}]"
        )
    return codes


def _perplexity(counts: Tensor) -> Tensor:
    total = counts.sum()
    if total <= 0:
        return counts.new_tensor(0.0)
    probs = counts / total
    return torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())


class VectorQuantizer(QuantizerCheckpoint):
    """One codebook of K vectors of size d; maps each row of x [N, d] to its nearest code.

    Args:
        dim: embedding size d.
        codebook_size: number of codes K.
        codebook_mode: ``"ema"`` updates codes as exponential moving averages of the
            vectors assigned to them (no optimizer needed; the codebook is a buffer);
            ``"learned"`` makes the codebook an ``nn.Parameter`` trained by your optimizer
            through the codebook loss ``||sg(x) - q||^2`` added to ``loss``.
        decay: EMA decay of cluster sizes and sums (``"ema"`` mode).
        commitment_weight: weight of the commitment loss ``||x - sg(q)||^2``.
        kmeans_init: initialise the codebook by k-means on the first training batch;
            until then the module refuses to encode. With ``False`` the codebook starts
            as standard-normal rows (unit rows if ``use_cosine``).
        kmeans_iters: Lloyd iterations of that k-means.
        dead_code_patience: a code not assigned in this many consecutive training
            batches is re-seeded from a vector of the current batch (sampled in
            proportion to its quantization error, so revived codes go where the data is
            served worst). ``None`` disables restarts. Choose it so that
            ``patience * batch_size`` is well above ``codebook_size``.
        use_cosine: L2-normalise inputs and codes and assign by cosine similarity.
        assignment: how training batches are assigned to codes. ``"nearest"``: each row
            to its nearest code. ``"sinkhorn"``: balanced assignment, as in SwAV and
            LC-Rec: a few Sinkhorn-Knopp iterations rescale ``exp(-distance / t)`` so
            that every code receives about the same share of the batch, and each row
            takes the code of largest share. Codebooks then spread over the data instead
            of crowding dense regions, which lowers collisions of semantic IDs. Only
            training passes use it; ``encode`` always returns the nearest code.
        sinkhorn_iters: Sinkhorn-Knopp iterations (``"sinkhorn"`` only).
        sinkhorn_temperature: t as a fraction of the spread (standard deviation) of the
            batch's distances; towards 0 the assignment tends to nearest-code, larger
            values balance harder and, too large (about 0.3), ignore the distances.
        sync_distributed: when torch.distributed is initialised with more than one rank,
            sum codebook statistics (k-means sums, EMA counts and sums, usage) over ranks
            and take restart vectors and k-means seeds from rank 0, so codebooks stay
            identical on every rank. Learned codebooks additionally rely on DDP
            averaging their gradients.
        eps: Laplace smoothing of EMA cluster sizes.

    The rows of x are quantized independently; flatten other dimensions into N first.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        codebook_mode: CodebookMode = "ema",
        decay: float = 0.99,
        commitment_weight: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_patience: int | None = 50,
        use_cosine: bool = False,
        assignment: AssignmentMode = "nearest",
        sinkhorn_iters: int = 3,
        sinkhorn_temperature: float = 0.05,
        sync_distributed: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(codebook_size, int) or codebook_size < 1:
            raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}")
        if codebook_mode not in ("ema", "learned"):
            raise ValueError(f"codebook_mode must be 'ema' or 'learned', got {codebook_mode!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        if commitment_weight < 0:
            raise ValueError(f"commitment_weight must be >= 0, got {commitment_weight!r}")
        if not isinstance(kmeans_iters, int) or kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be an int >= 0, got {kmeans_iters!r}")
        if dead_code_patience is not None and (
            not isinstance(dead_code_patience, int) or dead_code_patience < 1
        ):
            raise ValueError(f"dead_code_patience must be None or an int >= 1, got {dead_code_patience!r}")
        if assignment not in ("nearest", "sinkhorn"):
            raise ValueError(f"assignment must be 'nearest' or 'sinkhorn', got {assignment!r}")
        if not isinstance(sinkhorn_iters, int) or sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters must be an int >= 1, got {sinkhorn_iters!r}")
        if not sinkhorn_temperature > 0:
            raise ValueError(f"sinkhorn_temperature must be > 0, got {sinkhorn_temperature!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_mode: CodebookMode = codebook_mode
        self.decay = float(decay)
        self.commitment_weight = float(commitment_weight)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = kmeans_iters
        self.dead_code_patience = dead_code_patience
        self.use_cosine = bool(use_cosine)
        self.assignment: AssignmentMode = assignment
        self.sinkhorn_iters = sinkhorn_iters
        self.sinkhorn_temperature = float(sinkhorn_temperature)
        self.sync_distributed = bool(sync_distributed)
        self.eps = float(eps)

        initial = torch.randn(codebook_size, dim)
        if self.use_cosine:
            initial = F.normalize(initial, dim=-1)
        if codebook_mode == "learned":
            self.codebook = nn.Parameter(initial)
        else:
            self.register_buffer("codebook", initial)
            # Starting the EMA at one pseudo-assignment on the current code keeps unused codes in place.
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            self.register_buffer("embed_sum", initial.clone())
        self.register_buffer("steps_since_used", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))

    # ----------------------------------------------------------------- properties
    @property
    def num_levels(self) -> int:
        """Number of code levels L (always 1)."""
        return 1

    @property
    def is_initialized(self) -> bool:
        """False until the k-means initialisation ran (or weights were loaded)."""
        return bool(self.initialized)

    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable; ``VectorQuantizer(**config())`` rebuilds the module."""
        return {
            "dim": self.dim,
            "codebook_size": self.codebook_size,
            "codebook_mode": self.codebook_mode,
            "decay": self.decay,
            "commitment_weight": self.commitment_weight,
            "kmeans_init": self.kmeans_init,
            "kmeans_iters": self.kmeans_iters,
            "dead_code_patience": self.dead_code_patience,
            "use_cosine": self.use_cosine,
            "assignment": self.assignment,
            "sinkhorn_iters": self.sinkhorn_iters,
            "sinkhorn_temperature": self.sinkhorn_temperature,
            "sync_distributed": self.sync_distributed,
            "eps": self.eps,
        }

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, mode={self.codebook_mode}, cosine={self.use_cosine}"

    def effective_codebook(self) -> Tensor:
        """[K, d] the code vectors that decode() returns (unit rows when ``use_cosine``)."""
        return F.normalize(self.codebook, dim=-1) if self.use_cosine else self.codebook

    # ----------------------------------------------------------------- internals
    def _sum(self, tensor: Tensor) -> Tensor:
        return all_reduce_sum_(tensor) if self.sync_distributed else tensor

    def _from_rank0(self, tensor: Tensor) -> Tensor:
        return broadcast_(tensor, src=0) if self.sync_distributed else tensor

    def _prepare(self, x: Tensor) -> Tensor:
        x = x.to(self.codebook.dtype)
        return F.normalize(x, dim=-1) if self.use_cosine else x

    def _nearest(
        self, x: Tensor, codebook: Tensor, *, with_distance: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Index [N] of the nearest code per row and, optionally, the distance [N] to it."""
        if self.use_cosine:
            sims = x @ codebook.t()
            best, codes = sims.max(dim=-1)
            return codes, (1.0 - best) if with_distance else None
        # ||x||^2 is constant per row, so the argmin only needs ||c||^2 - 2 x.c (one addmm).
        partial = torch.addmm((codebook * codebook).sum(-1), x, codebook.t(), beta=1.0, alpha=-2.0)
        best, codes = partial.min(dim=-1)
        if not with_distance:
            return codes, None
        return codes, (best + (x * x).sum(-1)).clamp_min(0.0)

    def _balanced(self, x: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
        """Sinkhorn-balanced codes [N] of x [N, d] and each row's distance [N] to its code.

        Works on ``distance - row minimum``, so neither the rows' norms nor the data's
        scale change the result; column sums are summed over ranks, so the balance is
        over the global batch.
        """
        if self.use_cosine:
            excess = -(x @ codebook.t())
        else:
            excess = torch.addmm((codebook * codebook).sum(-1), x, codebook.t(), beta=1.0, alpha=-2.0)
        row_offset = excess.min(dim=-1, keepdim=True).values
        excess = excess - row_offset
        scale = (excess.std() * self.sinkhorn_temperature).clamp_min(torch.finfo(excess.dtype).tiny)
        # Each row's largest entry is 1, so after dividing by column sums (>= that entry) no entry
        # exceeds 1 and no row sums to zero: the iterations cannot overflow or divide by zero.
        plan = torch.exp(-excess / scale)
        for _ in range(self.sinkhorn_iters):
            plan = plan / self._sum(plan.sum(0)).clamp_min(torch.finfo(plan.dtype).tiny)
            plan = plan / plan.sum(-1, keepdim=True)
        codes = plan.argmax(dim=-1)
        chosen = excess.gather(1, codes.unsqueeze(-1)).squeeze(-1) + row_offset.squeeze(-1)
        distance = (1.0 + chosen) if self.use_cosine else (chosen + (x * x).sum(-1))
        return codes, distance.clamp_min(0.0)

    def _distance_to(self, x: Tensor, point: Tensor) -> Tensor:
        if self.use_cosine:
            return (1.0 - x @ point).clamp_min(0.0)
        return ((x - point) ** 2).sum(-1)

    @torch.no_grad()
    def _kmeans_plus_plus_seeds(self, x: Tensor) -> Tensor:
        """[K, d] rows of x drawn by k-means++ (each next seed far from the previous ones).

        Random seeds often put two centroids in one cluster and none in another, and
        Lloyd's iterations rarely undo that; k-means++ seeding avoids most such cases.
        """
        n = x.shape[0]
        seeds = x.new_empty(self.codebook_size, x.shape[1])
        pick = int(torch.randint(n, (1,)))
        seeds[0] = x[pick]
        closest = self._distance_to(x, seeds[0])
        for index in range(1, self.codebook_size):
            total = float(closest.sum())
            # Fewer distinct rows than codes: the rest are duplicates, left to dead-code restart.
            pick = int(torch.multinomial(closest, 1)) if total > 0 else int(torch.randint(n, (1,)))
            seeds[index] = x[pick]
            closest = torch.minimum(closest, self._distance_to(x, seeds[index]))
        return seeds

    @torch.no_grad()
    def _kmeans(self, x: Tensor) -> None:
        k = self.codebook_size
        # Seeds are rank 0's rows so every rank starts Lloyd's iterations from the same centroids.
        centroids = self._from_rank0(self._kmeans_plus_plus_seeds(x))
        for _ in range(self.kmeans_iters):
            codes, _ = self._nearest(x, centroids)
            counts = self._sum(torch.bincount(codes, minlength=k).to(x.dtype))
            sums = self._sum(torch.zeros_like(centroids).index_add_(0, codes, x))
            means = sums / counts.clamp_min(1.0).unsqueeze(-1)
            if self.use_cosine:
                means = F.normalize(means, dim=-1)
            # Empty clusters keep their centroid; dead-code restart deals with them later.
            centroids = torch.where((counts > 0).unsqueeze(-1), means, centroids)
        codes, _ = self._nearest(x, centroids)
        counts = self._sum(torch.bincount(codes, minlength=k).to(x.dtype))
        self.codebook.data.copy_(centroids)
        if self.codebook_mode == "ema":
            size = counts.clamp_min(1.0)
            self.cluster_size.copy_(size)
            self.embed_sum.copy_(centroids * size.unsqueeze(-1))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, x: Tensor, codes: Tensor, counts: Tensor) -> None:
        sums = self._sum(torch.zeros_like(self.embed_sum).index_add_(0, codes, x))
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        updated = self.embed_sum / smoothed.unsqueeze(-1)
        if self.use_cosine:
            updated = F.normalize(updated, dim=-1)
        self.codebook.copy_(updated)

    @torch.no_grad()
    def _restart_dead_codes(self, x: Tensor, counts: Tensor, distance: Tensor) -> int:
        self.steps_since_used.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_code_patience is None:
            return 0
        dead = (self.steps_since_used >= self.dead_code_patience).nonzero().squeeze(-1)
        # counts are summed over ranks, so every rank finds the same dead codes and the same shapes below.
        num_dead = int(dead.numel())
        if num_dead == 0:
            return 0
        weights = distance.to(torch.float32) + 1e-12
        picks = torch.multinomial(weights, num_dead, replacement=num_dead > x.shape[0])
        fresh = self._from_rank0(x[picks].clone())
        if self.use_cosine:
            fresh = F.normalize(fresh, dim=-1)
        # .data: a learned codebook may be saved for backward already; dead rows get no gradient anyway.
        self.codebook.data[dead] = fresh
        if self.codebook_mode == "ema":
            self.cluster_size[dead] = 1.0
            self.embed_sum[dead] = fresh
        self.steps_since_used[dead] = 0
        return num_dead

    def _quantize(self, x: Tensor, update: bool) -> _LevelResult:
        """Quantize prepared rows x [N, d]; update codebooks when ``update``."""
        if update:
            if x.shape[0] == 0:
                raise ValueError("cannot train a quantizer on an empty batch")
            if not self.is_initialized:
                self._kmeans(x.detach())
        elif not self.is_initialized:
            raise RuntimeError(
                "codebook is not initialised: run a training forward pass (k-means init on the first batch) "
                "or load trained weights before encoding"
            )
        codebook = self.effective_codebook()
        if update and self.assignment == "sinkhorn":
            codes, distance = self._balanced(x.detach(), codebook.detach())
        else:
            codes, distance = self._nearest(x.detach(), codebook.detach(), with_distance=update)
        quantized = F.embedding(codes, codebook)
        loss = self.commitment_weight * F.mse_loss(x, quantized.detach()) if x.shape[0] else x.new_zeros(())
        if self.codebook_mode == "learned" and x.shape[0]:
            loss = loss + F.mse_loss(quantized, x.detach())
        counts = torch.bincount(codes, minlength=self.codebook_size).to(x.dtype)
        restarted = 0
        if update:
            counts = self._sum(counts)
            if self.codebook_mode == "ema":
                self._ema_update(x.detach(), codes, counts)
            assert distance is not None
            restarted = self._restart_dead_codes(x.detach(), counts, distance)
        return _LevelResult(quantized=quantized, codes=codes, loss=loss, counts=counts, restarted=restarted)

    # ----------------------------------------------------------------- public API
    @_without_autocast
    def forward(self, x: TensorOrArray) -> QuantizerOutput:
        """Quantize x [N, d]; in training mode also update the codebook.

        Returns:
            :class:`QuantizerOutput` with quantized [N, d] (straight-through), codes [N, 1],
            loss [] and stats.
        """
        x = _check_embeddings(x, self.dim)
        prepared = self._prepare(x)
        level = self._quantize(prepared, update=self.training)
        quantized = prepared + (level.quantized - prepared).detach()
        with torch.no_grad():
            stats = QuantizerStats(
                usage=(level.counts > 0).to(torch.float32).mean().reshape(1),
                perplexity=_perplexity(level.counts.to(torch.float32)).reshape(1),
                recon_mse=F.mse_loss(level.quantized, prepared) if x.shape[0] else x.new_zeros(()),
                recon_cos=F.cosine_similarity(level.quantized, prepared, dim=-1).mean()
                if x.shape[0]
                else x.new_zeros(()),
                restarted_codes=torch.tensor([level.restarted]),
            )
        return QuantizerOutput(
            quantized=quantized.to(x.dtype), codes=level.codes.unsqueeze(-1), loss=level.loss, stats=stats
        )

    @torch.no_grad()
    @_without_autocast
    def encode(self, x: TensorOrArray) -> Tensor:
        """Codes [N, 1] (long) of x [N, d]; deterministic, never updates the codebook."""
        x = _check_embeddings(x, self.dim)
        if not self.is_initialized:
            raise RuntimeError("codebook is not initialised: train it on at least one batch or load weights")
        prepared = self._prepare(x)
        codebook = self.effective_codebook()
        parts = [self._nearest(chunk, codebook)[0] for chunk in prepared.split(_ENCODE_CHUNK_ROWS)]
        codes = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=x.device)
        return codes.unsqueeze(-1)

    @torch.no_grad()
    def decode(self, codes: TensorOrArray) -> Tensor:
        """Vectors [N, d] for codes [N, 1]."""
        codes = _check_codes(codes, 1, self.codebook_size)
        return F.embedding(codes[:, 0].long(), self.effective_codebook())



class ResidualQuantizer(QuantizerCheckpoint):
    """L stacked :class:`VectorQuantizer` levels, each quantizing what the previous left over.

    Level 0 quantizes x, level l quantizes ``x - sum_{j<l} q_j``; the reconstruction is the
    sum of the chosen codes, so coarse structure lands in the first level and each further
    level refines it. Codes are [N, L] with values in [0, K).

    Args:
        dim: embedding size d.
        num_levels: number of levels L.
        codebook_size: codes per level K.
        normalize_input: L2-normalise x before quantizing (the reconstruction then targets
            the unit vector); useful when only the direction of a preference embedding
            matters. Levels themselves use Euclidean distance, because residuals are not
            directions.
        codebook_mode, decay, commitment_weight, kmeans_init, kmeans_iters,
        dead_code_patience, assignment, sinkhorn_iters, sinkhorn_temperature,
        sync_distributed, eps: passed to every level; see :class:`VectorQuantizer`.
    """

    def __init__(
        self,
        dim: int,
        num_levels: int,
        codebook_size: int,
        *,
        normalize_input: bool = False,
        codebook_mode: CodebookMode = "ema",
        decay: float = 0.99,
        commitment_weight: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_patience: int | None = 50,
        assignment: AssignmentMode = "nearest",
        sinkhorn_iters: int = 3,
        sinkhorn_temperature: float = 0.05,
        sync_distributed: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels must be a positive int, got {num_levels!r}")
        self.normalize_input = bool(normalize_input)
        self._level_config: dict[str, Any] = {
            "codebook_mode": codebook_mode,
            "decay": decay,
            "commitment_weight": commitment_weight,
            "kmeans_init": kmeans_init,
            "kmeans_iters": kmeans_iters,
            "dead_code_patience": dead_code_patience,
            "assignment": assignment,
            "sinkhorn_iters": sinkhorn_iters,
            "sinkhorn_temperature": sinkhorn_temperature,
            "sync_distributed": sync_distributed,
            "eps": eps,
        }
        self.levels = nn.ModuleList(
            VectorQuantizer(dim, codebook_size, use_cosine=False, **self._level_config)
            for _ in range(num_levels)
        )
        self.dim = dim
        self.codebook_size = codebook_size

    @property
    def num_levels(self) -> int:
        """Number of levels L."""
        return len(self.levels)

    @property
    def is_initialized(self) -> bool:
        """True once every level's codebook is initialised."""
        return all(level.is_initialized for level in self.levels)

    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable; ``ResidualQuantizer(**config())`` rebuilds the module."""
        first = self.levels[0].config()
        return {
            "dim": self.dim,
            "num_levels": self.num_levels,
            "codebook_size": self.codebook_size,
            "normalize_input": self.normalize_input,
            **{key: first[key] for key in self._level_config},
        }

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_levels={self.num_levels}, codebook_size={self.codebook_size}"

    @property
    def codebooks(self) -> Tensor:
        """[L, K, d] the code vectors of every level (detached)."""
        return torch.stack([level.effective_codebook().detach() for level in self.levels])

    def _prepare(self, x: Tensor) -> Tensor:
        x = x.to(self.levels[0].codebook.dtype)
        return F.normalize(x, dim=-1) if self.normalize_input else x

    @_without_autocast
    def forward(self, x: TensorOrArray) -> QuantizerOutput:
        """Quantize x [N, d]; in training mode also update every level's codebook.

        Returns:
            :class:`QuantizerOutput` with quantized [N, d] (straight-through; the sum of the
            chosen codes), codes [N, L], loss [] (summed over levels) and stats.
        """
        x = _check_embeddings(x, self.dim)
        target = self._prepare(x)
        residual = target
        reconstruction = torch.zeros_like(target)
        codes, losses, counts, restarted = [], [], [], []
        for level in self.levels:
            result = level._quantize(residual, update=self.training)
            # Later levels see a residual detached from earlier codes: each level's loss trains its own codebook.
            residual = residual - result.quantized.detach()
            reconstruction = reconstruction + result.quantized.detach()
            codes.append(result.codes)
            losses.append(result.loss)
            counts.append(result.counts)
            restarted.append(result.restarted)
        quantized = target + (reconstruction - target).detach()
        with torch.no_grad():
            stacked = torch.stack(counts).to(torch.float32)
            nonempty = x.shape[0] > 0
            stats = QuantizerStats(
                usage=(stacked > 0).to(torch.float32).mean(-1),
                perplexity=torch.stack([_perplexity(c) for c in stacked]),
                recon_mse=F.mse_loss(reconstruction, target) if nonempty else x.new_zeros(()),
                recon_cos=F.cosine_similarity(reconstruction, target, dim=-1).mean()
                if nonempty
                else x.new_zeros(()),
                restarted_codes=torch.tensor(restarted),
            )
        return QuantizerOutput(
            quantized=quantized.to(x.dtype),
            codes=torch.stack(codes, dim=-1),
            loss=torch.stack(losses).sum(),
            stats=stats,
        )

    @torch.no_grad()
    @_without_autocast
    def encode(self, x: TensorOrArray) -> Tensor:
        """Codes [N, L] (long) of x [N, d]; deterministic, never updates the codebooks."""
        x = _check_embeddings(x, self.dim)
        if not self.is_initialized:
            raise RuntimeError("codebooks are not initialised: train on at least one batch or load weights")
        codebooks = [level.effective_codebook() for level in self.levels]
        out = torch.empty(x.shape[0], self.num_levels, dtype=torch.long, device=x.device)
        start = 0
        for chunk in self._prepare(x).split(_ENCODE_CHUNK_ROWS):
            residual = chunk.clone()
            for index, (level, codebook) in enumerate(zip(self.levels, codebooks, strict=True)):
                codes, _ = level._nearest(residual, codebook)
                out[start : start + chunk.shape[0], index] = codes
                residual -= codebook.index_select(0, codes)
            start += chunk.shape[0]
        return out

    @torch.no_grad()
    def decode(self, codes: TensorOrArray) -> Tensor:
        """Reconstruction [N, d] for codes [N, L]: the sum of each level's code vector."""
        codes = _check_codes(codes, self.num_levels, self.codebook_size)
        codes = codes.long()
        out = F.embedding(codes[:, 0], self.levels[0].effective_codebook())
        for index in range(1, self.num_levels):
            out = out + F.embedding(codes[:, index], self.levels[index].effective_codebook())
        return out

    @torch.no_grad()
    def encode_unique(self, x: TensorOrArray, existing: TensorOrArray | None = None) -> Tensor:
        """Unique codes [N, L + 1] for x [N, d], e.g. semantic IDs of items.

        The extra last column disambiguates rows whose L codes coincide: 0, 1, 2, ... in
        row order within each group. Encode the whole catalog at once; to add items to
        an already-encoded catalog pass its IDs as ``existing`` [M, L + 1] and new rows
        continue after the largest suffix in use. See
        :func:`prefquant.append_disambiguation`.
        """
        return append_disambiguation(self.encode(x), existing=existing)

