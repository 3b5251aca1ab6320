"""Preference tokens in a diffusers text-to-image pipeline: textual inversion + optional UNet LoRA.

:class:`ImagePreferenceAdapter` wraps a ``StableDiffusionXLPipeline`` (two tokenizers, two
CLIP text encoders of different widths; the zoo's tiny one or SDXL base by path) or a
single-encoder Stable Diffusion 1.x/2.x ``StableDiffusionPipeline`` through one interface:

- the visual tokens are added to every tokenizer (same ids in each, checked) and a row per
  token to every text encoder, initialised by :class:`~prefgen.token_rows.TokenInit`;
- only those rows train: the embedding matrices get a gradient mask, and
  :meth:`ImagePreferenceAdapter.restore_frozen_rows` (hooked into the optimizer by
  :meth:`ImagePreferenceAdapter.protect_frozen_rows`) puts the other rows back after each
  step, since Adam's momentum and weight decay would otherwise move them (the diffusers
  ``textual_inversion_sdxl`` recipe); everything else is frozen, except an optional peft
  LoRA on the UNet's attention projections;
- :meth:`ImagePreferenceAdapter.diffusion_loss` is the training building block (noise
  prediction MSE through the VAE latents, the scheduler's ``add_noise`` and SDXL's added
  conditions), :meth:`ImagePreferenceAdapter.generate` makes PIL images (text-to-image, or
  image-to-image from reference images for the reference-conditioned mode), and
  :meth:`ImagePreferenceAdapter.sampler_steps` / :meth:`ImagePreferenceAdapter.decode_latents`
  run the pipeline's sampler step by step with a graph, for reward backprop;
- an optional :class:`~prefgen.latent_prior.LatentPrior` (:meth:`ImagePreferenceAdapter.set_latent_prior`)
  shifts the initial latents of every prompt that holds preference tokens, for what the text
  encoders cannot express; :meth:`ImagePreferenceAdapter.initial_latents` gives them to any pipeline;
- :meth:`ImagePreferenceAdapter.save` writes one textual-inversion safetensors file per text
  encoder (``learned_embeds.safetensors``, ``learned_embeds_2.safetensors``; one tensor
  ``emb`` [N, d_e], token names in ``prefgen_image_adapter.json`` and the file metadata)
  and the UNet LoRA in diffusers' LoRA format (and ``latent_prior.safetensors`` when there is a
  prior); :func:`load_preference_embeddings` puts them
  into any fresh pipeline with one ``load_textual_inversion`` call per encoder/tokenizer::

      rows = safetensors.torch.load_file("adapter/learned_embeds_2.safetensors")["emb"]
      pipe.load_textual_inversion(rows, token=tokens, tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from prefgen.latent_prior import LATENT_PRIOR_FILE, LatentPrior
from prefgen.reproducible_files import sort_safetensors_metadata
from prefgen.soft_prompt import DEFAULT_SOFT_PREFIX, SoftPromptInjector, soft_prompt_tokens
from prefgen.token_rows import (
    AdapterFileError,
    AddedTokensView,
    PreferenceTokenError,
    TokenInit,
    add_new_tokens,
    check_safetensors_file,
    initial_token_rows,
    read_json_file,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from PIL.Image import Image

__all__ = [
    "DEFAULT_UNET_LORA_TARGETS",
    "EMBEDDING_FILES",
    "ImagePreferenceAdapter",
    "PromptEmbeddings",
    "UNetLoraOptions",
    "load_preference_embeddings",
]

# Attention projections of diffusers' UNet2DConditionModel (self- and cross-attention).
DEFAULT_UNET_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
EMBEDDING_FILES: tuple[str, ...] = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")
EMBEDDING_KEY = "emb"
IMAGE_ADAPTER_FILE = "prefgen_image_adapter.json"
UNET_LORA_FOLDER = "unet_lora"
_FORMAT = "prefgen.image_adapter"
_VERSION = 1
# (tokenizer attribute, text encoder attribute) of the pipelines, in the order their files are numbered.
_ENCODER_SLOTS: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))


@dataclass
class UNetLoraOptions:
    """peft LoRA on the UNet; ``alpha`` defaults to ``r`` (scale 1)."""

    r: int = 4
    alpha: int | None = None
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_UNET_LORA_TARGETS))


@dataclass
class PromptEmbeddings:
    """Text conditioning of a batch: ``prompt_embeds`` [B, T, D] (SDXL: both encoders' penultimate
    hidden states concatenated, D = d_1 + d_2) and ``pooled`` [B, P] (SDXL's projected pooled
    output of encoder 2; ``None`` for single-encoder pipelines)."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor | None


def _encoder_slots(pipeline: DiffusionPipeline) -> list[tuple[str, str]]:
    slots = [(t, e) for t, e in _ENCODER_SLOTS if getattr(pipeline, t, None) is not None and getattr(pipeline, e, None) is not None]
    if not slots:
        raise ValueError(f"{type(pipeline).__name__} has no tokenizer/text encoder pair: not a text-to-image Stable Diffusion pipeline")
    return slots


def _is_sdxl(pipeline: DiffusionPipeline) -> bool:
    return hasattr(pipeline, "text_encoder_2")


def _decouple_tokenizers(pipeline: DiffusionPipeline) -> None:
    # The zoo may build both SDXL slots on one tokenizer object; tokens must be added once per
    # slot (and load_textual_inversion refuses a token already present), so give each its own.
    if getattr(pipeline, "tokenizer_2", None) is not None and pipeline.tokenizer_2 is pipeline.tokenizer:
        pipeline.tokenizer_2 = copy.deepcopy(pipeline.tokenizer)


def _fix_legacy_eos_pooling(text_encoder: nn.Module, tokenizer: Any) -> None:
    """Make CLIP pool at the first end-of-text token instead of the largest id.

    Old CLIP configs (``eos_token_id == 2``, e.g. SDXL base) pool at ``input_ids.argmax()``,
    which is the end-of-text token only while it has the largest id: an added token would
    hijack the pooled output. For prompts without added tokens both rules pick the same position.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None or eos == 2:
        return
    if getattr(text_encoder.config, "eos_token_id", None) == 2:
        text_encoder.config.eos_token_id = eos
    for module in text_encoder.modules():
        if getattr(module, "eos_token_id", None) == 2:
            module.eos_token_id = eos


def _register_output_capture(module: nn.Module) -> None:
    """Re-register the output-capture specs of every transformers model inside ``module``.

    transformers 5 records ``hidden_states`` through hooks whose specs live in a per-process
    registry filled when a model is *constructed*. A model unpickled in a fresh process (the
    workers of ``ddp_spawn``) was never constructed there, so ``output_hidden_states=True``
    would silently return ``None``. Older transformers have no registry: nothing to do.
    """
    try:
        # Here, not at the top: importing prefgen loads no diffusers, transformers or peft (seconds each).
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:
        return
    for sub in module.modules():
        if hasattr(sub, "_can_record_outputs"):
            _CAN_RECORD_REGISTRY[sub] = sub._can_record_outputs


class ImagePreferenceAdapter(AddedTokensView, nn.Module):
    """An SDXL (or SD 1.x/2.x) pipeline with preference tokens; only their rows (+ UNet LoRA) train.

    Args:
        pipeline: a ``StableDiffusionXLPipeline`` or ``StableDiffusionPipeline``; modified in
            place (tokens added, encoders resized, everything frozen but the new rows).
        tokens: the visual tokens, e.g. the ``<pv_…>`` part of ``PreferenceTokenizer.all_tokens()``.
        init: one :class:`TokenInit` for every encoder, or one per encoder (widths differ in SDXL).
        unet_lora: LoRA options for the UNet, or ``None`` (textual inversion only).
        soft_prompt_slots / soft_prompt_prefix: placeholder tokens for the soft-prompt baseline.
    """

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        tokens: Sequence[str],
        *,
        init: TokenInit | Sequence[TokenInit] | None = None,
        unet_lora: UNetLoraOptions | None = None,
        soft_prompt_slots: int = 0,
        soft_prompt_prefix: str = DEFAULT_SOFT_PREFIX,
    ) -> None:
        super().__init__()
        if soft_prompt_slots < 0:
            raise ValueError(f"soft_prompt_slots must be >= 0, got {soft_prompt_slots}")
        _decouple_tokenizers(pipeline)
        slots = _encoder_slots(pipeline)
        inits = list(init) if isinstance(init, Sequence) else [init if init is not None else TokenInit()] * len(slots)
        if len(inits) != len(slots):
            raise PreferenceTokenError(f"{len(inits)} TokenInit given for {len(slots)} text encoders")
        tokens = list(tokens)
        soft_tokens = soft_prompt_tokens(soft_prompt_slots, soft_prompt_prefix)
        all_ids: list[list[int]] = []
        for (tok_attr, enc_attr), token_init in zip(slots, inits, strict=True):
            tokenizer, encoder = getattr(pipeline, tok_attr), getattr(pipeline, enc_attr)
            known_rows = len(tokenizer)
            ids = add_new_tokens(tokenizer, tokens + soft_tokens, what=f"{tok_attr}")
            if len(tokenizer) > encoder.get_input_embeddings().weight.shape[0]:
                encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            weight = encoder.get_input_embeddings().weight
            with torch.no_grad():
                rows = initial_token_rows(weight[:known_rows], len(tokens), token_init, what=f"{enc_attr} embeddings")
                weight[ids[: len(tokens)]] = rows.to(weight)
                # Placeholders are overridden per batch; a mean row keeps them harmless when not.
                weight[ids[len(tokens) :]] = weight[:known_rows].float().mean(0).to(weight)
            _fix_legacy_eos_pooling(encoder, tokenizer)
            all_ids.append(ids)
        if any(ids != all_ids[0] for ids in all_ids[1:]):
            raise PreferenceTokenError(
                f"the tokenizers gave the new tokens different ids ({[ids[:3] for ids in all_ids]} …): "
                "SDXL's two tokenizers must share one vocabulary"
            )
        unet_lora_config: dict[str, Any] | None = None
        if unet_lora is not None:
            # Here, not at the top: importing prefgen loads no diffusers, transformers or peft (seconds each).
            from peft import LoraConfig

            pipeline.unet.requires_grad_(False)
            config = LoraConfig(
                r=unet_lora.r,
                lora_alpha=unet_lora.alpha if unet_lora.alpha is not None else unet_lora.r,
                lora_dropout=unet_lora.dropout,
                init_lora_weights="gaussian",
                target_modules=list(unet_lora.target_modules),
            )
            pipeline.unet.add_adapter(config)
            unet_lora_config = asdict(unet_lora)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "pipeline_class": type(pipeline).__name__,
            "tokens": tokens,
            "soft_prompt_tokens": soft_tokens,
            "token_ids": all_ids[0][: len(tokens)],
            "soft_prompt_ids": all_ids[0][len(tokens) :],
            "encoders": [enc for _, enc in slots],
            "embedding_files": list(EMBEDDING_FILES[: len(slots)]),
            "embedding_widths": [int(getattr(pipeline, enc).get_input_embeddings().weight.shape[1]) for _, enc in slots],
            "unet_lora": unet_lora_config,
        }
        self._setup(pipeline, meta, train_lora=unet_lora is not None)

    def _setup(self, pipeline: DiffusionPipeline, meta: dict[str, Any], *, train_lora: bool) -> None:
        # Here, not at the top: importing prefgen loads no diffusers, transformers or peft (seconds each).
        from diffusers import DDPMScheduler

        self.pipeline = pipeline
        self.meta = meta
        self._slots = _encoder_slots(pipeline)
        # Registered as submodules so that .to(device) / .train() / .eval() reach them.
        self.vae = pipeline.vae
        self.unet = pipeline.unet
        self.text_encoders = nn.ModuleList([getattr(pipeline, enc) for _, enc in self._slots])
        for module in (self.vae, *self.text_encoders):
            module.requires_grad_(False)
        if not train_lora:
            self.unet.requires_grad_(False)
        token_ids = torch.tensor(meta["token_ids"], dtype=torch.long)
        for index, encoder in enumerate(self.text_encoders):
            weight = encoder.get_input_embeddings().weight
            weight.requires_grad_(True)
            mask = torch.zeros(weight.shape[0], 1, dtype=torch.bool, device=weight.device)
            mask[token_ids] = True
            # Non-persistent buffers: they follow .to(device) but stay out of state_dict().
            self.register_buffer(f"_trainable_rows_{index}", mask, persistent=False)
            self.register_buffer(f"_original_rows_{index}", weight.detach().clone(), persistent=False)
        self._mask_frozen_row_gradients()
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self._img2img: Any = None
        self.latent_prior: LatentPrior | None = None
        self._soft = (
            [SoftPromptInjector(enc.get_input_embeddings(), meta["soft_prompt_ids"]) for enc in self.text_encoders]
            if meta["soft_prompt_ids"]
            else None
        )

    def _mask_frozen_row_gradients(self) -> None:
        """Zero gradients on every embedding row but the preference tokens' (plain Adam then leaves them
        exactly, and gradient clipping and 8-bit optimizer state see only the rows that train)."""
        for index, encoder in enumerate(self.text_encoders):
            encoder.get_input_embeddings().weight.register_hook(
                lambda grad, i=index: grad * getattr(self, f"_trainable_rows_{i}").to(grad.dtype))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        _register_output_capture(self)
        # Pickling (ddp_spawn's workers) drops tensor hooks: without the mask there, the frozen rows'
        # gradients would enter the clipping norm, and the ranks would train other weights than 1 process.
        self._mask_frozen_row_gradients()

    # ----------------------------------------------------------------------------------------------------------------
    # Construction from folders, saving

    @classmethod
    def from_base(
        cls,
        path: str | Path,
        tokens: Sequence[str],
        *,
        torch_dtype: torch.dtype | None = None,
        local_files_only: bool = True,
        **options: Any,
    ) -> ImagePreferenceAdapter:
        """Load a pipeline folder (``DiffusionPipeline.from_pretrained``) and add ``tokens``; ``options`` as the constructor's."""
        return cls(_load_pipeline(path, torch_dtype, local_files_only), tokens, **options)

    @classmethod
    def load(
        cls,
        folder: str | Path,
        base: str | Path | DiffusionPipeline,
        *,
        torch_dtype: torch.dtype | None = None,
        local_files_only: bool = True,
    ) -> ImagePreferenceAdapter:
        """Reload a saved adapter onto ``base`` (a pipeline folder or a fresh, unmodified pipeline).

        Uses :func:`load_preference_embeddings` (diffusers' own loaders); for inference — the
        new rows stay trainable, a loaded UNet LoRA does not.
        """
        pipeline = base if not isinstance(base, (str, Path)) else _load_pipeline(base, torch_dtype, local_files_only)
        meta = load_preference_embeddings(pipeline, folder)
        adapter = cls.__new__(cls)
        nn.Module.__init__(adapter)
        adapter._setup(pipeline, meta, train_lora=False)
        if meta.get("latent_prior"):
            adapter.set_latent_prior(LatentPrior.load(Path(folder) / meta["latent_prior"]))
        return adapter

    def save(self, folder: str | Path) -> Path:
        """Write one textual-inversion file per text encoder, the UNet LoRA (if any) and ``prefgen_image_adapter.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = self.meta["tokens"] + self.meta["soft_prompt_tokens"]
        ids = self.meta["token_ids"] + self.meta["soft_prompt_ids"]
        for encoder, (_, enc_attr), file in zip(self.text_encoders, self._slots, self.meta["embedding_files"], strict=True):
            rows = encoder.get_input_embeddings().weight.detach()[ids].to("cpu", torch.float32).contiguous()
            metadata = {"format": _FORMAT, "encoder": enc_attr, "tokens": json.dumps(names)}
            save_file({EMBEDDING_KEY: rows}, str(folder / file), metadata=metadata)
        if self.meta["unet_lora"] is not None:
            # Here, not at the top: importing prefgen loads no diffusers, transformers or peft (seconds each).
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            # One LoRA on the UNet: "default" when built here, "default_0" when reloaded by diffusers.
            (adapter_name,) = self.unet.peft_config
            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet, adapter_name=adapter_name))
            # Sets (target_modules) sorted: diffusers would write them in the order of this process's string hashes.
            lora_metadata = {key: sorted(value) if isinstance(value, set) else value
                             for key, value in self.unet.peft_config[adapter_name].to_dict().items()}
            type(self.pipeline).save_lora_weights(
                str(folder / UNET_LORA_FOLDER), unet_lora_layers=layers, unet_lora_adapter_metadata=lora_metadata
            )
        (folder / LATENT_PRIOR_FILE).unlink(missing_ok=True)
        if self.latent_prior is not None:
            self.latent_prior.save(folder / LATENT_PRIOR_FILE)
        for written in sorted(folder.rglob("*.safetensors")):
            sort_safetensors_metadata(written)
        (folder / IMAGE_ADAPTER_FILE).write_text(json.dumps(self.meta, indent=2), encoding="utf-8")
        return folder

    # ----------------------------------------------------------------------------------------------------------------
    # Introspection

    @property
    def latent_channels(self) -> int:
        """C of the UNet's latents [B, C, h, w] (4 for SDXL)."""
        return int(self.unet.config.in_channels)

    @property
    def embedding_widths(self) -> list[int]:
        """Input-embedding width of each text encoder (SDXL: [768, 1280] for CLIP-L, CLIP-G)."""
        return list(self.meta["embedding_widths"])

    @property
    def tokenizers(self) -> list[Any]:
        return [getattr(self.pipeline, t) for t, _ in self._slots]

    @property
    def image_size(self) -> int:
        """The side in pixels of the pipeline's default images: the UNet's ``default_sample_size``
        latents times the VAE's scale factor (what :meth:`sampler_steps` samples)."""
        return int(self.pipeline.default_sample_size) * int(self.pipeline.vae_scale_factor)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def token_embeddings(self) -> list[torch.Tensor]:
        """The preference-token rows of each text encoder, [N, d_e] per encoder (detached copies)."""
        return [enc.get_input_embeddings().weight.detach()[self.token_ids].clone() for enc in self.text_encoders]

    def embedding_center_and_spread(self) -> list[tuple[torch.Tensor, float]]:
        """Per encoder: the original rows' mean [d_e] and mean distance to it (for a :class:`SoftPromptProjector`)."""
        out = []
        first_new = min(self.meta["token_ids"])
        for index in range(len(self.text_encoders)):
            old = getattr(self, f"_original_rows_{index}")[:first_new].float()
            center = old.mean(0)
            out.append((center, float((old - center).norm(dim=1).mean())))
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The text encoders' embedding matrices (only new rows get gradient) and the UNet LoRA weights."""
        params = [enc.get_input_embeddings().weight for enc in self.text_encoders]
        return params + [p for p in self.unet.parameters() if p.requires_grad]

    def trainable_rows(self) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
        """Each of :meth:`trainable_parameters` with the rows of it that train: the preference tokens'
        ids [N] of a text encoder's embedding matrix [V, d_e] (its other rows are kept at their
        original values), None (all of it) for a UNet LoRA weight; for a checkpoint that keeps only what trains."""
        embeddings = {id(encoder.get_input_embeddings().weight) for encoder in self.text_encoders}
        return [(p, self.token_ids if id(p) in embeddings else None) for p in self.trainable_parameters()]

    @torch.no_grad()
    def restore_frozen_rows(self) -> None:
        """Put every embedding row but the preference tokens' back to its original value (after an optimizer step)."""
        for index, encoder in enumerate(self.text_encoders):
            weight = encoder.get_input_embeddings().weight
            keep = getattr(self, f"_trainable_rows_{index}")
            weight.copy_(torch.where(keep, weight, getattr(self, f"_original_rows_{index}").to(weight)))

    def protect_frozen_rows(self, optimizer: torch.optim.Optimizer) -> Any:
        """Call :meth:`restore_frozen_rows` after every ``optimizer.step()``; returns the hook handle."""
        return optimizer.register_step_post_hook(lambda *_: self.restore_frozen_rows())

    # ----------------------------------------------------------------------------------------------------------------
    # Conditioning, loss

    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Text conditioning exactly as the pipeline's ``encode_prompt`` computes it (differentiable).

        SDXL: each encoder's penultimate hidden state [B, 77, d_e], concatenated, and encoder
        2's projected pooled output; SD 1.x/2.x: the last hidden state of the one encoder.
        """
        prompts = list(prompts)
        hidden: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        sdxl = _is_sdxl(self.pipeline)
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            batch = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
            ids = batch.input_ids.to(encoder.device)
            if sdxl:
                out = encoder(ids, output_hidden_states=True)
                if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
                    pooled = out[0]
                hidden.append(out.hidden_states[-2])
            else:
                use_mask = getattr(encoder.config, "use_attention_mask", False)
                mask = batch.attention_mask.to(encoder.device) if use_mask else None
                hidden.append(encoder(ids, attention_mask=mask)[0])
        return PromptEmbeddings(torch.cat(hidden, dim=-1), pooled)

    def token_counts(self, prompts: Sequence[str]) -> torch.Tensor:
        """How many times each preference token is in each prompt: float32 [B, N] (the first tokenizer's
        reading, untruncated; every tokenizer gives the tokens the same ids)."""
        ids = self.tokenizers[0](list(prompts), add_special_tokens=False).input_ids
        index = {int(t): n for n, t in enumerate(self.meta["token_ids"])}
        counts = torch.zeros(len(ids), len(index))
        for row, prompt_ids in enumerate(ids):
            for token in prompt_ids:
                if (column := index.get(int(token))) is not None:
                    counts[row, column] += 1
        return counts

    def set_latent_prior(self, prior: LatentPrior | None) -> None:
        """Use ``prior`` (rows [N, C] for this adapter's N tokens and the UNet's C channels) for every
        text-to-image sample from now on; None removes it. Saved and reloaded with the adapter."""
        if prior is not None and (prior.num_tokens, prior.channels) != (len(self.meta["tokens"]), self.latent_channels):
            raise ValueError(f"latent prior rows {tuple(prior.rows.shape)} do not fit this adapter: "
                             f"[{len(self.meta['tokens'])} tokens, {self.latent_channels} latent channels]")
        self.latent_prior = prior
        self.meta["latent_prior"] = LATENT_PRIOR_FILE if prior is not None else None

    def encode_latents(self, images: torch.Tensor, *, generator: torch.Generator | None = None,
                       sample: bool = True) -> torch.Tensor:
        """Sampler-space latents [B, C, h, w] of ``images`` [B, 3, H, W] in [-1, 1] through the frozen VAE:
        a draw of its posterior (``sample``) or its mean, less the VAE's shift, times its scaling factor."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        vae = self.vae
        with torch.no_grad():
            posterior = vae.encode(images.to(device=self.device, dtype=vae.dtype)).latent_dist
            latents = posterior.sample(generator=generator) if sample else posterior.mean
            shift = getattr(vae.config, "shift_factor", None)
            if shift is not None:
                latents = latents - shift
            return latents * vae.config.scaling_factor

    def initial_latents(self, prompts: Sequence[str], seed: int | Sequence[int] = 0, *,
                        height: int | None = None, width: int | None = None,
                        latent_offsets: torch.Tensor | None = None) -> torch.Tensor:
        """The unit-variance noise the pipeline would start ``prompts`` from, shifted by the latent prior:
        float32 [B, C, h, w] (h, w: the pixel size over the VAE's scale factor; default size if None).

        The noise is what diffusers draws with CPU generators: one seeded by ``seed`` for the batch,
        or one per prompt for a list of seeds. Pass the result as ``latents=`` to any pipeline with
        the same scheduler to reproduce :meth:`generate` (the pipeline scales it by the scheduler's
        ``init_noise_sigma``). ``latent_offsets`` [B, C] are added besides the prior's (steering by
        anything else than the tokens, e.g. a baseline's).
        """
        factor = int(self.pipeline.vae_scale_factor)
        default = self.image_size
        h, w = (height or default) // factor, (width or default) // factor
        shape = (self.latent_channels, h, w)
        if isinstance(seed, int):
            noise = torch.randn((len(prompts), *shape), generator=torch.Generator("cpu").manual_seed(seed))
        else:
            if len(seed) != len(prompts):
                raise ValueError(f"{len(seed)} seeds for {len(prompts)} prompts: give one seed, or one per prompt")
            noise = torch.cat([torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seed])
        if self.latent_prior is not None:
            noise = noise + self.latent_prior.offsets(self.token_counts(prompts))[:, :, None, None]
        if latent_offsets is not None:
            if latent_offsets.shape != (len(prompts), self.latent_channels):
                raise ValueError(f"latent_offsets must be [{len(prompts)}, {self.latent_channels}], got {tuple(latent_offsets.shape)}")
            noise = noise + latent_offsets.detach().to("cpu", noise.dtype)[:, :, None, None]
        return noise

    @contextmanager
    def soft_prompt(self, vectors: Sequence[torch.Tensor] | None) -> Iterator[None]:
        """While active, placeholder ``k`` of prompt ``b`` embeds as ``vectors[e][b, k]`` in encoder ``e``.

        ``vectors``: one [B, S, d_e] tensor per text encoder (SDXL: two widths); ``None`` does nothing.
        """
        if vectors is None:
            yield
            return
        if self._soft is None:
            raise ValueError("this adapter reserved no soft-prompt slots: build it with soft_prompt_slots > 0")
        if isinstance(vectors, torch.Tensor) or len(vectors) != len(self._soft):
            raise ValueError(f"soft prompt needs one [B, S, d] tensor per text encoder ({len(self._soft)}), widths {self.embedding_widths}")
        with ExitStack() as stack:
            for injector, v in zip(self._soft, vectors, strict=True):
                stack.enter_context(injector(v))
            yield

    def diffusion_loss(
        self,
        images: torch.Tensor,
        prompts: Sequence[str],
        *,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        soft_prompt: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Noise-prediction MSE for ``images`` [B, 3, H, W] in [-1, 1] captioned by ``prompts`` (scalar).

        Latents come from the frozen VAE (sampled, scaled by its ``scaling_factor``), are noised
        at ``timesteps`` [B] (uniform if ``None``) with ``noise`` (like the latents; Gaussian if
        ``None``) by a DDPM scheduler with the pipeline's schedule; the UNet predicts the noise
        (or velocity, per the scheduler's ``prediction_type``) from the prompts' conditioning
        and, for SDXL, the added conditions ``text_embeds`` (pooled) and ``time_ids``
        (original size, crop (0, 0), target size = H, W).
        """
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        device = self.device
        latents = self.encode_latents(images, generator=generator).to(self.unet.dtype)
        batch = latents.shape[0]
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator else device).to(device, latents.dtype)
        if timesteps is None:
            high = self.noise_scheduler.config.num_train_timesteps
            timesteps = torch.randint(0, high, (batch,), generator=generator, device=generator.device if generator else device)
        timesteps = timesteps.to(device=device, dtype=torch.long)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with self.soft_prompt(soft_prompt):
            cond = self.encode_prompts(prompts)
        kwargs: dict[str, Any] = {}
        if _is_sdxl(self.pipeline):
            h, w = images.shape[-2:]
            time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=device, dtype=cond.prompt_embeds.dtype).repeat(batch, 1)
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": time_ids}
        prediction = self.unet(noisy, timesteps, encoder_hidden_states=cond.prompt_embeds, **kwargs).sample
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")
        return F.mse_loss(prediction.float(), target.float())

    # ----------------------------------------------------------------------------------------------------------------
    # Sampling with a graph (reward backprop), generation

    def sampler_steps(self, prompts: Sequence[str], *, num_inference_steps: int, guidance_scale: float,
                      seed: int) -> tuple[list[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]:
        """The pipeline's own sampler as one callable per denoising step, and the initial latents [B, C, h, w].

        Each step maps latents [B, C, h, w] to the next; run them in order (all of them, or
        keeping a graph through the last K only, e.g. prefreward's ``truncated_backprop_loop``)
        and turn the result into images with :meth:`decode_latents`. Same scheduler class and
        config as the pipeline, classifier-free guidance as the pipeline does it when
        ``guidance_scale`` > 1 (zero negative conditioning when ``force_zeros_for_empty_prompt``,
        else the empty prompt), SDXL's added conditions (``text_embeds``, ``time_ids`` for the
        default size). The prompt conditioning is computed once, with a graph to the token rows
        when grad is enabled. The initial latents are :meth:`initial_latents` (a CPU generator seeded
        by ``seed``, the latent prior's shift) times the scheduler's ``init_noise_sigma`` (B =
        ``len(prompts)``, h = w = the pipeline's ``default_sample_size``).
        """
        pipe, unet, device = self.pipeline, self.unet, self.device
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        cond = self.encode_prompts(prompts)
        embeds, pooled = cond.prompt_embeds, cond.pooled
        guided = guidance_scale > 1.0
        if guided:
            if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
                negative_embeds = torch.zeros_like(embeds)
                negative_pooled = torch.zeros_like(pooled) if pooled is not None else None
            else:
                negative = self.encode_prompts([""] * len(prompts))
                negative_embeds, negative_pooled = negative.prompt_embeds, negative.pooled
            embeds = torch.cat([negative_embeds, embeds])
            pooled = torch.cat([negative_pooled, pooled]) if pooled is not None else None
        pixels = self.image_size
        extra: dict[str, Any] = {}
        if pooled is not None:
            time_ids = torch.tensor([[pixels, pixels, 0, 0, pixels, pixels]], device=device, dtype=embeds.dtype).repeat(len(embeds), 1)
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        latents = self.initial_latents(prompts, seed).to(device) * scheduler.init_noise_sigma

        def make_step(t: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            def step(x: torch.Tensor) -> torch.Tensor:
                model_input = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
                prediction = unet(model_input, t, encoder_hidden_states=embeds, **extra).sample
                if guided:
                    unconditional, conditional = prediction.chunk(2)
                    prediction = unconditional + guidance_scale * (conditional - unconditional)
                return scheduler.step(prediction, t, x).prev_sample

            return step

        return [make_step(t) for t in scheduler.timesteps], latents

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] from sampler latents [B, C, h, w] (the frozen VAE; differentiable,
        H = h times the VAE's scale factor)."""
        vae = self.vae
        latents = latents / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents + shift
        return vae.decode(latents.to(vae.dtype)).sample.float().clamp(-1, 1)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        seed: int | Sequence[int] = 0,
        num_inference_steps: int = 20,
        guidance_scale: float = 5.0,
        height: int | None = None,
        width: int | None = None,
        reference_images: Sequence[Any] | torch.Tensor | None = None,
        strength: float = 0.6,
        soft_prompt: Sequence[torch.Tensor] | None = None,
        latent_offsets: torch.Tensor | None = None,
        **pipeline_kwargs: Any,
    ) -> list[Image]:
        """PIL images for ``prompts``, reproducible by ``seed`` (a CPU generator, as diffusers recommends).

        A list of seeds, one per prompt, gives each image its own generator: image ``b`` is then
        the one ``prompts[b]`` gets alone with ``seed[b]``, whatever else is in the batch. With a
        latent prior or ``latent_offsets`` [B, C], text-to-image starts from :meth:`initial_latents`
        (prompts without preference tokens and offsets get the pipeline's own noise).

        With ``reference_images`` (PIL images or [B, 3, H, W] in [0, 1]) it runs the matching
        image-to-image pipeline on the same components, ``strength`` in (0, 1] saying how
        far from the reference it may go (the reference-conditioned mode).
        """
        if not isinstance(seed, int) and len(seed) != len(prompts):
            raise ValueError(f"{len(seed)} seeds for {len(prompts)} prompts: give one seed, or one per prompt")
        was_training = self.training
        if was_training:  # .eval() walks the pipeline's ~900 modules: a few percent of a tiny model's call
            self.eval()
        try:
            with self.soft_prompt(soft_prompt):
                cond = self.encode_prompts(prompts)
            kwargs: dict[str, Any] = {
                "prompt_embeds": cond.prompt_embeds,
                "num_inference_steps": num_inference_steps,
                "guidance_scale": guidance_scale,
                "generator": (torch.Generator("cpu").manual_seed(seed) if isinstance(seed, int)
                              else [torch.Generator("cpu").manual_seed(int(s)) for s in seed]),
            }
            if cond.pooled is not None:
                kwargs["pooled_prompt_embeds"] = cond.pooled
            if reference_images is not None and latent_offsets is not None:
                raise ValueError("latent_offsets shift text-to-image noise; image-to-image starts from the references")
            if reference_images is None and (self.latent_prior is not None or latent_offsets is not None):
                kwargs["latents"] = self.initial_latents(prompts, seed, height=height, width=width,
                                                         latent_offsets=latent_offsets).to(self.device, cond.prompt_embeds.dtype)
            kwargs.update(pipeline_kwargs)
            if reference_images is None:
                return list(self.pipeline(height=height, width=width, **kwargs).images)
            return list(self.img2img_pipeline()(image=reference_images, strength=strength, **kwargs).images)
        finally:
            if was_training:
                self.train()

    def img2img_pipeline(self) -> DiffusionPipeline:
        """The image-to-image pipeline sharing this pipeline's components (built once)."""
        if self._img2img is None:
            # Here, not at the top: importing prefgen loads no diffusers, transformers or peft (seconds each).
            from diffusers import AutoPipelineForImage2Image

            self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipeline)
        return self._img2img


def load_preference_embeddings(pipeline: DiffusionPipeline, folder: str | Path) -> dict[str, Any]:
    """Load a saved adapter into ``pipeline`` with diffusers' loaders; returns the adapter's JSON.

    One ``load_textual_inversion`` call per text encoder / tokenizer (the rows of all tokens
    as one [N, d_e] tensor and the token list), then ``load_lora_weights`` for a UNet LoRA.
    Raises :class:`AdapterFileError` naming a missing, corrupt or mismatched file.
    """
    folder = Path(folder)
    meta = read_json_file(folder / IMAGE_ADAPTER_FILE, ["format", "version", "tokens", "soft_prompt_tokens", "token_ids", "embedding_files", "unet_lora"])
    if meta["format"] != _FORMAT or meta["version"] != _VERSION:
        raise AdapterFileError(f"adapter file {folder / IMAGE_ADAPTER_FILE} has format {meta['format']!r} v{meta['version']}, expected {_FORMAT!r} v{_VERSION}")
    _decouple_tokenizers(pipeline)
    slots = _encoder_slots(pipeline)
    if len(slots) != len(meta["embedding_files"]):
        raise AdapterFileError(f"{folder / IMAGE_ADAPTER_FILE} has {len(meta['embedding_files'])} embedding files but the pipeline has {len(slots)} text encoders")
    names = list(meta["tokens"]) + list(meta["soft_prompt_tokens"])
    tensors = []
    for (_, enc_attr), file in zip(slots, meta["embedding_files"], strict=True):
        path = folder / file
        if EMBEDDING_KEY not in check_safetensors_file(path):
            raise AdapterFileError(f"adapter file {path} has no tensor {EMBEDDING_KEY!r}")
        rows = load_file(str(path))[EMBEDDING_KEY]
        width = getattr(pipeline, enc_attr).get_input_embeddings().weight.shape[1]
        if rows.shape != (len(names), width):
            raise AdapterFileError(f"adapter file {path} holds rows {tuple(rows.shape)}, expected [{len(names)}, {width}] for {enc_attr}")
        tensors.append(rows)
    ids: list[list[int]] = []
    for (tok_attr, enc_attr), rows in zip(slots, tensors, strict=True):
        tokenizer, encoder = getattr(pipeline, tok_attr), getattr(pipeline, enc_attr)
        present = [t for t in names if t in tokenizer.get_vocab()]
        if present:
            raise PreferenceTokenError(f"{len(present)} token(s) already in {tok_attr}: {present[:3]}; load into a fresh pipeline")
        # load_textual_inversion grows the table with transformers' mean resizing (a costly
        # covariance fit and a warning) only to overwrite the new rows; growing it first skips that.
        encoder.resize_token_embeddings(len(tokenizer) + len(names), mean_resizing=False)
        pipeline.load_textual_inversion(rows.to(encoder.dtype), token=names, tokenizer=tokenizer, text_encoder=encoder)
        _fix_legacy_eos_pooling(encoder, tokenizer)
        ids.append([int(i) for i in tokenizer.convert_tokens_to_ids(meta["tokens"])])
    if any(i != ids[0] for i in ids[1:]) or ids[0] != list(meta["token_ids"]):
        raise AdapterFileError(f"the pipeline's tokenizers gave the tokens of {folder} other ids than recorded: a different base?")
    if meta["unet_lora"] is not None:
        lora_file = folder / UNET_LORA_FOLDER / "pytorch_lora_weights.safetensors"
        check_safetensors_file(lora_file)
        try:
            pipeline.load_lora_weights(str(folder / UNET_LORA_FOLDER))
        except Exception as err:  # diffusers/peft raise many types for mismatched LoRA files
            raise AdapterFileError(f"cannot load the UNet LoRA {lora_file}: {err}") from err
    return meta


def _load_pipeline(path: str | Path, torch_dtype: torch.dtype | None, local_files_only: bool) -> DiffusionPipeline:
    # Here, not at the top: importing prefgen loads no diffusers, transformers or peft (seconds each).
    from diffusers import DiffusionPipeline

    folder = Path(path)
    if str(path).startswith((".", "/", "~")) and not folder.expanduser().is_dir():
        raise AdapterFileError(f"base pipeline folder {folder} does not exist")
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    return DiffusionPipeline.from_pretrained(str(path), **kwargs)
