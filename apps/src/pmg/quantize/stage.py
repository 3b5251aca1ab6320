"""The quantize stage: a ``ResidualQuantizer`` per modality trained on the preference stage's
user vectors, then every user's codes and preference tokens.

Artifacts in ``<run>/quantize/``:

    <modality>/                      each quantizer (prefquant save_pretrained: safetensors + JSON)
    tokenizer.json                   the PreferenceTokenizer (codes ↔ "<pv_0_17>" tokens)
    user_codes.safetensors           {modality: int64 [U, L]}
    user_tokens.jsonl                {"user_id", "tokens": {modality: "<pv_0_3><pv_1_9>…"}} per user
    metrics.json                     usage, perplexity, reconstruction, NMI with true tastes
    checkpoints/, tb/                the checkpoint a killed fit resumes from (``pmg.training.Resumable``)
                                     and TensorBoard logs
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file, save_file

from pmg.atomic import atomic_directory, atomic_file
from pmg.data.dataset_stage import load_prepared
from pmg.preference.stage import load_preferences
from pmg.runs import RunDirectory, RunError, stage_fingerprint
from pmg.stages import Stage, StageResult, complete_stage, reuse_or_clear
from pmg.training import (
    OptimizerConfig,
    ResumableLoader,
    TrainerConfig,
    build_optimizer,
    build_trainer,
    resume_point,
)
from prefquant import (
    DEFAULT_PREFIXES,
    ModalitySpec,
    PreferenceTokenizer,
    ResidualQuantizer,
    code_perplexity,
    code_usage,
    normalized_mutual_information,
    tuple_ids,
)

__all__ = ["CodebookMode", "QuantizeConfig", "QuantizeModule", "UserTokens", "load_user_tokens", "QUANTIZE_STAGE"]

# Which ground-truth tastes each modality should carry (for the NMI report on the catalog).
_TASTES_OF = {"visual": ("colour", "pattern"), "textual": ("material", "style")}


class CodebookMode(StrEnum):
    """How the quantizer's codebooks learn (``quantize.codebook_mode``): ``ema``, exponential moving
    averages of the vectors assigned to each code (no optimizer); ``learned``, gradient descent on a
    codebook loss with the stage's optimizer."""

    ema = "ema"
    learned = "learned"


@dataclass
class QuantizeConfig:
    modalities: list[str] = field(default_factory=lambda: ["visual", "textual", "id"])
    num_levels: int = 3
    codebook_size: int = 32
    normalize_input: bool = True
    codebook_mode: CodebookMode = CodebookMode.ema
    decay: float = 0.9
    commitment_weight: float = 0.25
    kmeans_init: bool = True
    dead_code_patience: int = 10
    batch_size: int = 256
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # learned codebooks only
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_epochs=40, log_every_n_steps=4))

    def validate(self) -> None:
        unknown = [m for m in self.modalities if m not in DEFAULT_PREFIXES]
        if unknown or not self.modalities:
            raise ValueError(f"quantize.modalities {unknown or '[]'} must be among {sorted(DEFAULT_PREFIXES)}")
        if self.num_levels < 1 or self.codebook_size < 2:
            raise ValueError("quantize.num_levels must be >= 1 and codebook_size >= 2")
        if self.codebook_mode not in tuple(CodebookMode):  # a config built directly in Python
            raise ValueError(f"quantize.codebook_mode must be one of {[m.value for m in CodebookMode]}, not {self.codebook_mode!r}")
        self.trainer.validate()
        if self.codebook_mode == CodebookMode.ema and self.trainer.max_steps > 0:
            # Lightning counts optimizer steps, and EMA codebooks take none: max_steps would never stop the fit.
            raise ValueError("quantize.trainer.max_steps cannot bound a fit of EMA codebooks (they take no optimizer "
                             "step); set quantize.trainer.max_epochs instead, or codebook_mode: learned")
        self.optimizer.validate()


class QuantizeModule(L.LightningModule):
    """Trains one ``ResidualQuantizer`` per modality on fixed user vectors.

    Batches are user indices [B]; ``embeddings[m]`` [U, d] holds the vectors. EMA codebooks
    need no optimizer; learned ones are stepped by hand (manual optimization), so both modes
    share one loop. Under DDP the quantizers all-reduce their codebook statistics themselves.
    """

    def __init__(self, embeddings: dict[str, torch.Tensor], config: QuantizeConfig) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.config = config
        self.embeddings = embeddings
        self.quantizers = torch.nn.ModuleDict({
            m: ResidualQuantizer(
                x.shape[1], config.num_levels, config.codebook_size,
                normalize_input=config.normalize_input, codebook_mode=config.codebook_mode,  # type: ignore[arg-type]
                decay=config.decay, commitment_weight=config.commitment_weight,
                kmeans_init=config.kmeans_init, dead_code_patience=config.dead_code_patience,
            )
            for m, x in embeddings.items()
        })

    def configure_optimizers(self):
        params = [p for p in self.quantizers.parameters() if p.requires_grad]
        return build_optimizer(params, self.config.optimizer) if params else None

    def training_step(self, users: torch.Tensor, batch_idx: int) -> None:
        optimizer = self.optimizers() if self.config.codebook_mode == "learned" else None
        total = torch.zeros((), device=self.device)
        for modality, quantizer in self.quantizers.items():
            out = quantizer(self.embeddings[modality].to(self.device)[users])
            total = total + out.loss
            size = users.numel()
            self.log(f"train/{modality}/usage_min", out.stats.usage.min(), batch_size=size)
            self.log(f"train/{modality}/recon_cos", out.stats.recon_cos, batch_size=size)
        if optimizer is not None:
            optimizer.zero_grad()
            self.manual_backward(total)
            optimizer.step()
        self.log("train/loss", total, prog_bar=True, batch_size=users.numel())


@dataclass
class UserTokens:
    """The quantize stage's result: per-modality codes [U, L] and the tokenizer."""

    codes: dict[str, torch.Tensor]
    tokenizer: PreferenceTokenizer
    user_ids: list[str]

    def prompt_fragment(self, user: int, modalities: tuple[str, ...] | None = None) -> str:
        """The user's tokens for ``modalities`` (default: all), e.g. ``"<pv_0_3><pv_1_9><pv_2_1>"``."""
        chosen = modalities or tuple(self.codes)
        return self.tokenizer.prompt_fragment({m: self.codes[m][user] for m in chosen})


def _report(codes: dict[str, torch.Tensor], quantizers: torch.nn.ModuleDict, embeddings: dict[str, torch.Tensor],
            config: QuantizeConfig, tastes: dict[str, list[int]] | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)
    for modality, level_codes in codes.items():
        usage = code_usage(level_codes, config.codebook_size)
        perplexity = code_perplexity(level_codes, config.codebook_size)
        for level in range(level_codes.shape[1]):
            metrics[f"{modality}/usage_level{level}"] = float(usage[level])
            metrics[f"{modality}/perplexity_level{level}"] = float(perplexity[level])
        metrics[f"{modality}/usage_min"] = float(usage.min())
        x = embeddings[modality]
        target = torch.nn.functional.normalize(x, dim=-1) if config.normalize_input else x
        recon = quantizers[modality].decode(level_codes)
        metrics[f"{modality}/recon_cos"] = float(torch.nn.functional.cosine_similarity(recon, target, dim=-1).mean())
        metrics[f"{modality}/distinct_users_share"] = float(len(torch.unique(level_codes, dim=0)) / len(level_codes))
        if tastes is None:
            continue
        for names in _TASTES_OF.values():
            for name in names:
                if name not in tastes:
                    continue
                labels = torch.tensor(tastes[name])
                first = level_codes[:, 0]
                metrics[f"{modality}/nmi_{name}"] = normalized_mutual_information(first, labels)
                metrics[f"{modality}/nmi_tuple_{name}"] = normalized_mutual_information(tuple_ids(level_codes), labels)
                random_codes = torch.randint(0, config.codebook_size, first.shape, generator=generator)
                metrics[f"random/nmi_{name}"] = normalized_mutual_information(random_codes, labels)
    return metrics


def train_quantizers(config: QuantizeConfig, embeddings: dict[str, torch.Tensor], out_dir: Path, *,
                     resume_key: str | None = None) -> tuple[QuantizeModule, dict[str, torch.Tensor]]:
    """Fit one quantizer per modality of ``embeddings`` ({m: [U, d]}) and return the codes {m: [U, L]}.

    ``resume_key`` (the stage fingerprint, in a run): the fit checkpoints under
    ``out_dir/checkpoints`` and resumes a killed fit of the same key (``pmg.training.Resumable``).
    """
    L.seed_everything(config.trainer.seed, verbose=False)
    module = QuantizeModule(embeddings, config)
    users = torch.arange(next(iter(embeddings.values())).shape[0])
    # The same batches as a DataLoader; a fit killed within an epoch resumes them exactly.
    loader = ResumableLoader(users, batch_size=config.batch_size, shuffle=True, drop_last=len(users) > config.batch_size)
    resumable, start = resume_point(Path(out_dir) / "checkpoints", resume_key, config.trainer.checkpoint_every_n_steps, "quantize")
    trainer = build_trainer(config.trainer, out_dir, checkpointing=False, resumable=resumable)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=start, weights_only=True)
    module = module.cpu().eval()
    codes = {m: q.encode(embeddings[m]) for m, q in module.quantizers.items()}
    return module, codes


def _run_quantize_stage(config: QuantizeConfig, run: RunDirectory, upstream: str, force: bool) -> StageResult:
    stage_fp = stage_fingerprint("quantize", config, upstream)
    if (reused := reuse_or_clear(run, "quantize", stage_fp, force, resumable=True)) is not None:
        return reused
    config.validate()
    prefs = load_preferences(run)
    data, _ = load_prepared(run)
    embeddings = {m: prefs.user_preferences[m] for m in config.modalities if m in prefs.user_preferences}
    if not embeddings:
        raise RunError(f"the preference stage produced none of the modalities {config.modalities}")
    out = run.stage_dir("quantize")
    module, codes = train_quantizers(config, embeddings, out, resume_key=stage_fp)
    tokenizer = PreferenceTokenizer({
        m: ModalitySpec(DEFAULT_PREFIXES[m], (config.codebook_size,) * config.num_levels) for m in embeddings
    })
    tastes_path = run.stage_dir("preference") / "user_tastes.json"
    tastes = json.loads(tastes_path.read_text()) if tastes_path.is_file() else None
    metrics = _report(codes, module.quantizers, embeddings, config, tastes)

    for modality, quantizer in module.quantizers.items():
        with atomic_directory(out / modality) as tmp:
            quantizer.save_pretrained(tmp)
    with atomic_file(out / "tokenizer.json") as tmp:
        tokenizer.save(tmp)
    with atomic_file(out / "user_codes.safetensors") as tmp:
        save_file({m: c.contiguous() for m, c in codes.items()}, str(tmp))
    with atomic_file(out / "user_tokens.jsonl") as tmp, open(tmp, "w") as f:
        for user, user_id in enumerate(data.user_ids):
            fragments = {m: tokenizer.prompt_fragment({m: codes[m][user]}) for m in codes}
            f.write(json.dumps({"user_id": user_id, "tokens": fragments}) + "\n")
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))

    usage = min(metrics[f"{m}/usage_min"] for m in codes)
    summary = (
        f"{len(codes)} modalities × {config.num_levels} levels × {config.codebook_size} codes; min usage {usage:.2f}; "
        + ", ".join(f"{m} recon cos {metrics[f'{m}/recon_cos']:.2f}" for m in codes)
    )
    if "visual/nmi_colour" in metrics and "textual/nmi_material" in metrics:
        summary += (
            f"; NMI visual–colour {metrics['visual/nmi_colour']:.2f}, textual–material {metrics['textual/nmi_material']:.2f}"
            f" (random {metrics['random/nmi_colour']:.2f})"
        )
    return complete_stage(run, "quantize", stage_fp, summary, metrics=metrics)


def load_user_tokens(run: RunDirectory) -> UserTokens:
    """The quantize stage's codes and tokenizer (``RunError`` naming what to run if missing or damaged)."""
    run.require("quantize")
    out = run.stage_dir("quantize")
    try:
        codes = load_file(out / "user_codes.safetensors")
        tokenizer = PreferenceTokenizer.load(out / "tokenizer.json")
        user_ids = [json.loads(line)["user_id"] for line in (out / "user_tokens.jsonl").read_text().splitlines()]
    except Exception as err:
        raise RunError(f"quantize artifacts in {out} are damaged ({err}); rerun with --force quantize") from err
    return UserTokens(codes=codes, tokenizer=tokenizer, user_ids=user_ids)


QUANTIZE_STAGE = Stage("quantize", "quantize", QuantizeConfig, _run_quantize_stage, "turn user preferences into discrete tokens")
