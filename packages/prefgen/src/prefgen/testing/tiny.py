"""Tiny models of the real architectures, built from small configs.

Each builder returns the very class a real checkpoint loads into (``CLIPModel``,
``StableDiffusionXLPipeline``, ``Qwen2ForCausalLM``), randomly initialised at a size that
trains on a CPU in minutes. Saved with ``save_pretrained`` they are indistinguishable in
format from real checkpoints, so every consumer loads either by path.

The config dataclasses hold only plain fields (ints, floats, strings, lists) so that an
application can nest them in its own YAML configuration; importing this module loads torch
alone, as prefgen does, and no model library (the builders import transformers / diffusers when called).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLPipeline
    from transformers import (
        CLIPModel,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        PreTrainedTokenizerBase,
        Qwen2ForCausalLM,
    )

__all__ = [
    "TinyClipConfig",
    "TinySDXLConfig",
    "TinyCausalLMConfig",
    "build_tiny_clip",
    "build_tiny_sdxl_pipeline",
    "build_tiny_causal_lm",
    "text_encoders_from_clip",
    "sdxl_add_embedding_dim",
]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class TinyClipConfig:
    """A CLIP dual encoder: ViT image tower over ``patch_size`` patches, causal text tower.

    The text tower needs >= 2 layers: SDXL conditions on the penultimate hidden state.
    """

    text_hidden_size: int = 64
    text_layers: int = 3
    text_heads: int = 4
    text_intermediate_size: int = 128
    max_text_length: int = 32
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate_size: int = 128
    image_size: int = 64
    patch_size: int = 16
    projection_dim: int = 64
    hidden_act: str = "quick_gelu"

    def validate(self) -> None:
        _require(self.text_layers >= 2, "clip.text_layers must be >= 2 (SDXL uses the penultimate layer)")
        _require(self.text_hidden_size % self.text_heads == 0, "clip.text_hidden_size must be divisible by text_heads")
        _require(self.vision_hidden_size % self.vision_heads == 0, "clip.vision_hidden_size must be divisible by vision_heads")
        _require(self.image_size % self.patch_size == 0, "clip.image_size must be a multiple of patch_size")
        _require(self.max_text_length >= 4, "clip.max_text_length must be >= 4")
        _require(self.projection_dim >= 1 and self.vision_layers >= 1, "clip.projection_dim and vision_layers must be >= 1")


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def build_tiny_clip(config: TinyClipConfig, tokenizer: PreTrainedTokenizerBase) -> CLIPModel:
    """A randomly initialised ``CLIPModel`` whose vocabulary and special ids follow ``tokenizer``.

    ``get_image_features(pixel_values [B, 3, S, S])`` and ``get_text_features(input_ids [B, T])``
    give ``[B, projection_dim]`` (S = ``image_size``, T <= ``max_text_length``).
    """
    # Here, not at the top: importing this module loads no model library (module docstring).
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    config.validate()
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden_size,
        intermediate_size=config.text_intermediate_size,
        projection_dim=config.projection_dim,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_text_length,
        hidden_act=config.hidden_act,
        # Pooling takes the first eos position; the legacy value 2 would switch to argmax.
        **_special_ids(tokenizer),
    )
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden_size,
        intermediate_size=config.vision_intermediate_size,
        projection_dim=config.projection_dim,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden_act=config.hidden_act,
    )
    clip_config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=config.projection_dim
    )
    return CLIPModel(clip_config)


def text_encoders_from_clip(clip: CLIPModel) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """SDXL's two text encoders initialised from ``clip``'s text tower (weights copied).

    The first is the plain ``CLIPTextModel`` (CLIP-L's role), the second adds the text
    projection (CLIP-G's role, whose projected pooled output conditions the UNet).
    """
    # Here, not at the top: importing this module loads no model library (module docstring).
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_config = CLIPTextConfig.from_dict(clip.config.text_config.to_dict())
    text_config.projection_dim = clip.config.projection_dim
    first = CLIPTextModel(text_config)
    second = CLIPTextModelWithProjection(text_config)
    # transformers 5 flattened CLIPTextModel (no inner ``text_model``); 4.x nests one.
    state = clip.text_model.state_dict()
    getattr(first, "text_model", first).load_state_dict(state)
    second.text_model.load_state_dict(state)
    second.text_projection.load_state_dict(clip.text_projection.state_dict())
    return first, second


@dataclass
class TinySDXLConfig:
    """The SDXL architecture at toy size: VAE, ``text_time`` UNet, two CLIP text encoders.

    The VAE downsamples by ``2 ** (len(vae_block_out_channels) - 1)``; the UNet works at
    ``image_size / that`` latent pixels. ``unet_attention_heads`` is diffusers'
    ``attention_head_dim`` argument, which (for historical reasons) is a head count.
    Text encoder sizes apply only when the encoders are not copied from a CLIP model.
    """

    image_size: int = 64
    vae_block_out_channels: list[int] = field(default_factory=lambda: [8, 16, 32])
    vae_layers_per_block: int = 1
    # Few groups: with as many groups as channels (8 groups over the first block's 8 channels)
    # GroupNorm is instance norm, which erases each image's per-channel means, i.e. its colours.
    vae_norm_num_groups: int = 2
    vae_mid_block_attention: bool = False
    latent_channels: int = 4
    unet_block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    unet_down_block_types: list[str] = field(default_factory=lambda: ["DownBlock2D", "CrossAttnDownBlock2D"])
    unet_up_block_types: list[str] = field(default_factory=lambda: ["CrossAttnUpBlock2D", "UpBlock2D"])
    unet_layers_per_block: int = 1
    unet_attention_heads: int = 4
    unet_transformer_layers_per_block: int = 1
    unet_norm_num_groups: int = 8
    addition_time_embed_dim: int = 8
    text_hidden_size: int = 32
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate_size: int = 64
    text_projection_dim: int = 32
    max_text_length: int = 32
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    # "trailing" starts sampling at the last training timestep (pure noise); SD's "leading"
    # starts at 951 of 1000, where a 16×16 latent still carries its mean colour.
    timestep_spacing: str = "trailing"

    def validate(self) -> None:
        _require(self.timestep_spacing in ("leading", "trailing", "linspace"),
                 f"sdxl.timestep_spacing must be leading, trailing or linspace, not {self.timestep_spacing!r}")
        _require(len(self.vae_block_out_channels) >= 1, "sdxl.vae_block_out_channels must not be empty")
        factor = 2 ** (len(self.vae_block_out_channels) - 1)
        _require(self.image_size % factor == 0, f"sdxl.image_size must be a multiple of the VAE factor {factor}")
        n = len(self.unet_block_out_channels)
        _require(
            len(self.unet_down_block_types) == n and len(self.unet_up_block_types) == n,
            "sdxl.unet_down_block_types and unet_up_block_types need one entry per unet_block_out_channels",
        )
        latent = self.image_size // factor
        _require(latent % (2 ** (n - 1)) == 0, f"sdxl latent size {latent} must be divisible by 2**(UNet levels - 1)")
        for channels in self.unet_block_out_channels:
            _require(channels % self.unet_norm_num_groups == 0, "sdxl.unet_block_out_channels must be multiples of unet_norm_num_groups")
            _require(channels % self.unet_attention_heads == 0, "sdxl.unet_block_out_channels must be multiples of unet_attention_heads")
        for channels in self.vae_block_out_channels:
            _require(channels % self.vae_norm_num_groups == 0, "sdxl.vae_block_out_channels must be multiples of vae_norm_num_groups")
        _require(self.text_layers >= 2, "sdxl.text_layers must be >= 2 (SDXL uses the penultimate layer)")
        _require(self.addition_time_embed_dim % 2 == 0, "sdxl.addition_time_embed_dim must be even")
        _require(self.beta_schedule in ("linear", "scaled_linear"), "sdxl.beta_schedule must be 'linear' or 'scaled_linear'")


def sdxl_add_embedding_dim(text_projection_dim: int, addition_time_embed_dim: int) -> int:
    """Input width of SDXL's added-conditioning MLP: pooled text + six embedded size/crop ids."""
    return text_projection_dim + 6 * addition_time_embed_dim


def build_tiny_sdxl_pipeline(
    config: TinySDXLConfig,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_2: PreTrainedTokenizerBase | None = None,
    *,
    text_encoders: tuple[CLIPTextModel, CLIPTextModelWithProjection] | None = None,
) -> StableDiffusionXLPipeline:
    """A randomly initialised ``StableDiffusionXLPipeline`` (text encoders given or random).

    The UNet's cross-attention width is the sum of both encoders' hidden sizes (the pipeline
    concatenates their penultimate hidden states, [B, T, h1 + h2]); its ``text_time`` added
    conditioning takes encoder 2's projected pooled output [B, p] and six size/crop ids.
    """
    # Here, not at the top: importing this module loads no model library (module docstring).
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config.validate()
    tokenizer_2 = tokenizer_2 if tokenizer_2 is not None else tokenizer
    if text_encoders is None:
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden_size,
            intermediate_size=config.text_intermediate_size,
            projection_dim=config.text_projection_dim,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_text_length,
            **_special_ids(tokenizer),
        )
        text_encoders = (CLIPTextModel(text_config), CLIPTextModelWithProjection(text_config))
    first, second = text_encoders
    for encoder, tok in ((first, tokenizer), (second, tokenizer_2)):
        _require(
            encoder.config.vocab_size >= len(tok),
            f"text encoder vocabulary ({encoder.config.vocab_size}) is smaller than its tokenizer's ({len(tok)})",
        )
    cross_attention_dim = first.config.hidden_size + second.config.hidden_size
    projection_dim = second.config.projection_dim
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=tuple(["DownEncoderBlock2D"] * len(config.vae_block_out_channels)),
        up_block_types=tuple(["UpDecoderBlock2D"] * len(config.vae_block_out_channels)),
        block_out_channels=tuple(config.vae_block_out_channels),
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_num_groups,
        sample_size=config.image_size,
        mid_block_add_attention=config.vae_mid_block_attention,
        # A float32 toy VAE never needs the fp16 upcast path.
        force_upcast=False,
    )
    factor = 2 ** (len(config.vae_block_out_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=config.image_size // factor,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=tuple(config.unet_down_block_types),
        up_block_types=tuple(config.unet_up_block_types),
        block_out_channels=tuple(config.unet_block_out_channels),
        layers_per_block=config.unet_layers_per_block,
        attention_head_dim=config.unet_attention_heads,
        transformer_layers_per_block=config.unet_transformer_layers_per_block,
        norm_num_groups=config.unet_norm_num_groups,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=config.addition_time_embed_dim,
        projection_class_embeddings_input_dim=sdxl_add_embedding_dim(projection_dim, config.addition_time_embed_dim),
        use_linear_projection=True,
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        timestep_spacing=config.timestep_spacing,
        steps_offset=1 if config.timestep_spacing == "leading" else 0,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=first,
        text_encoder_2=second,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


@dataclass
class TinyCausalLMConfig:
    """A Qwen2-architecture decoder (RMSNorm, rotary positions, grouped-query attention, SwiGLU)."""

    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 176
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True

    def validate(self) -> None:
        _require(self.hidden_size % self.heads == 0, "lm.hidden_size must be divisible by lm.heads")
        _require(self.heads % self.kv_heads == 0, "lm.heads must be a multiple of lm.kv_heads")
        _require(self.layers >= 1 and self.max_position_embeddings >= 8, "lm.layers >= 1 and max_position_embeddings >= 8")
        _require((self.hidden_size // self.heads) % 2 == 0, "lm head dimension (hidden_size / heads) must be even for rotary embeddings")


def build_tiny_causal_lm(config: TinyCausalLMConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2ForCausalLM:
    """A randomly initialised ``Qwen2ForCausalLM`` over ``tokenizer``'s vocabulary.

    ``forward(input_ids [B, T])`` gives logits [B, T, len(tokenizer)].
    """
    # Here, not at the top: importing this module loads no model library (module docstring).
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config.validate()
    lm_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=config.tie_word_embeddings,
        **_special_ids(tokenizer),
    )
    model = Qwen2ForCausalLM(lm_config)
    with torch.no_grad():
        model.tie_weights()
    return model
