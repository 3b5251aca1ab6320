"""``ZooConfig``: every hyperparameter of the zoo stage, one nested section per model.

Each model section has ``base_model`` (a local folder or hub id): when set, that checkpoint
is loaded with ``from_pretrained`` instead of training a tiny model; with ``finetune: true``
it is then fine-tuned on the catalog for the section's ``trainer.max_steps`` and the result
is cached like a trained tiny model. The zoo trains by steps: each fit draws exactly
``trainer.max_steps`` batches (sampling with replacement), so ``max_epochs`` does not bound it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pmg.training import LrScheduleConfig, OptimizerConfig, TrainerConfig
from prefgen.testing.tiny import TinyCausalLMConfig, TinyClipConfig, TinySDXLConfig

__all__ = [
    "HoldoutConfig",
    "TokenizerConfig",
    "ClipTrainingConfig",
    "VaeTrainingConfig",
    "UNetTrainingConfig",
    "SDXLTrainingConfig",
    "CausalLMTrainingConfig",
    "JudgeModelConfig",
    "JudgeAugmentConfig",
    "JudgeTrainingConfig",
    "ZooEvalConfig",
    "ZooConfig",
]


def _trainer(steps: int, log_every: int = 10) -> TrainerConfig:
    # A fit is one epoch: a killed one resumes from its checkpoint of every 100 steps (a few MB each).
    return TrainerConfig(max_epochs=1, max_steps=steps, log_every_n_steps=log_every, checkpoint_every_n_steps=100)


def _check_steps(name: str, trainer: TrainerConfig, batch_size: int) -> None:
    trainer.validate()
    if trainer.max_steps < 1:
        raise ValueError(f"zoo.{name}.trainer.max_steps must be >= 1 (the zoo trains by steps)")
    if batch_size < 1:
        raise ValueError(f"zoo.{name}.batch_size must be >= 1")


def _check_base(key: str, base_model: str | None) -> None:
    """``key``: the option's path under ``zoo`` (``sdxl.base_model``), as the errors name it."""
    if base_model is None:
        return
    if not base_model.strip():
        raise ValueError(f"zoo.{key} is empty; use null for a tiny model trained on the catalog")
    looks_local = base_model.startswith((".", "/", "~")) or Path(base_model).expanduser().exists()
    if looks_local and not Path(base_model).expanduser().is_dir():
        raise ValueError(f"zoo.{key} {base_model!r} is not an existing folder")
    # A hub id is checked when loaded: with local_files_only it must be in the local HF cache.


@dataclass
class HoldoutConfig:
    """What no zoo model trains on. ``combos`` category×colour×pattern combinations are held
    out entirely (every item showing one), so text-to-image is tested on unseen combinations;
    ``item_fraction`` of the other items are held out too (CLIP retrieval and judge accuracy)."""

    seed: int = 0
    combos: int = 16
    item_fraction: float = 0.1
    # The attributes whose combinations are held out; all must be attributes of the dataset.
    attributes: list[str] = field(default_factory=lambda: ["category", "colour", "pattern"])

    def validate(self) -> None:
        if self.combos < 0:
            raise ValueError("zoo.holdout.combos must be >= 0")
        if not 0.0 <= self.item_fraction < 0.9:
            raise ValueError("zoo.holdout.item_fraction must be in [0, 0.9)")


@dataclass
class TokenizerConfig:
    """Offline tokenizers. ``clip_base`` / ``lm_base`` take a real tokenizer folder (or hub id)
    instead of training one; a model's ``base_model`` brings its own tokenizer and wins."""

    clip_base: str | None = None
    clip_vocab_size: int = 1024
    lm_base: str | None = None
    lm_vocab_size: int = 2048

    def validate(self) -> None:
        _check_base("tokenizers.clip_base", self.clip_base)
        _check_base("tokenizers.lm_base", self.lm_base)
        if self.clip_vocab_size <= 514:
            raise ValueError("zoo.tokenizers.clip_vocab_size must exceed 514 (512 byte symbols + 2 specials)")
        if self.lm_vocab_size <= 257:
            raise ValueError("zoo.tokenizers.lm_vocab_size must exceed 257 (256 byte symbols + 1 special)")


@dataclass
class ClipTrainingConfig:
    """Contrastive image–text training. Texts are attribute captions ("a red striped dress")
    with probability ``caption_probability``, else the item's own title/description.
    Items sharing a category×colour×pattern count as positives of each other."""

    base_model: str | None = None
    finetune: bool = False
    model: TinyClipConfig = field(default_factory=TinyClipConfig)
    batch_size: int = 64
    caption_probability: float = 0.8
    trainer: TrainerConfig = field(default_factory=lambda: _trainer(600))
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-3, weight_decay=0.01))

    def validate(self) -> None:
        _check_base("clip.base_model", self.base_model)
        self.model.validate()
        _check_steps("clip", self.trainer, self.batch_size)
        self.optimizer.validate()
        if not 0.0 <= self.caption_probability <= 1.0:
            raise ValueError("zoo.clip.caption_probability must be in [0, 1]")


@dataclass
class VaeTrainingConfig:
    """The AutoencoderKL: reconstruction (MSE) + ``colour_weight`` × MSE of the
    ``colour_pool``-average-pooled images + ``kl_weight`` × KL, on random ``crop_size`` crops
    (the VAE is convolutional; crops cut the cost by (S/crop)²)."""

    batch_size: int = 16
    crop_size: int = 32
    kl_weight: float = 1e-6
    # Without the pooled colour term the judge finds the true colour in 87% of held-out
    # reconstructions (blue decoded towards purple, yellow towards orange); with weight 4 over
    # 8x8 regions in 96%, at the same cost (1 at 90%, 10 at 96%; one VAE each, 1000 steps).
    colour_weight: float = 4.0
    colour_pool: int = 8
    # Fewer steps leave a colour cast that the judge reads as the wrong colour, and the UNet
    # cannot draw better than the VAE decodes: with the pixel MSE alone the judge found the true
    # colour in 73% of held-out reconstructions after 700 steps, 38% after 400 at 2e-3 (8 norm
    # groups), and 87-97% after 1000 cosine-decayed steps from 5e-3 (2 groups), depending on the
    # build; at a constant 5e-3 on where training stops. The decay and the colour term settle it.
    # 2000 steps, not 1000: the sparse profile's 16 shaded colours sit closer together (23 CIELAB
    # units apart at the least) than a 1000-step VAE's colour error, and the judge found the true
    # colour in 43% of held-out round trips there (0.99 on the default catalog); after 2000 steps in
    # 97.5%, shade 98% (one VAE; the zoo reports its own as vae_<attribute>_acc in zoo.json).
    trainer: TrainerConfig = field(default_factory=lambda: _trainer(2000))
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=5e-3))
    lr_schedule: LrScheduleConfig = field(default_factory=lambda: LrScheduleConfig(name="cosine", warmup_steps=50))


@dataclass
class UNetTrainingConfig:
    """The UNet: epsilon prediction on precomputed latents and prompt embeddings.
    ``prompt_dropout`` zeroes both text conditionings (what the SDXL pipeline feeds as the
    unconditional branch, ``force_zeros_for_empty_prompt``) for classifier-free guidance;
    ``snr_gamma`` > 0 applies min-SNR loss weighting; ``noise_offset`` adds a per-image,
    per-channel constant of that scale to the noise ("offset noise")."""

    batch_size: int = 24
    prompt_dropout: float = 0.1
    snr_gamma: float = 5.0
    # Without it a small latent keeps its mean (the item's colour) visible even at the last
    # timestep, so the UNet learns to read colour off the noise instead of the prompt and
    # draws pale, wrong colours from pure noise: held-out colour accuracy 0.39 (none) → 0.59
    # (0.1) → 0.53 (0.2) at 400 steps, lr 2e-3; 0.73 (0.2) with lr 4e-3 and cosine decay.
    # Zero-terminal-SNR + v-prediction, the other known fix, did as well (0.70), not better.
    noise_offset: float = 0.2
    # True: half the training captions name the item's hidden visual attributes ("a light red
    # striped dress", the sparse catalog's shade), as a pretrained SDXL knows the words "light"
    # and "dark"; the catalog's texts still never name them, so no keyword prompt can. Off by default: on the
    # sparse catalog, with it on, the zoo drew a named shade in only 0.64 of images (chance 0.5), the
    # tokens' images showed the user's shade no more often (0.52 against 0.47-0.51 without it), and the
    # keyword prompt gained colour (benchmarks/generation.py, docs/results.md row S5).
    hidden_visual_words: bool = False
    # > 0: the zoo keeps an exponential moving average of the UNet's weights with this decay
    # (updated every step) instead of the last step's weights; 0: the last step's.
    ema_decay: float = 0.0
    # 1200 steps, not 600: held-out colour at guidance 3 0.81-0.95 (mean 0.88, four UNets)
    # against 0.67-0.78 (mean 0.74, three), category 0.80-0.88 against 0.55-0.64; more images
    # per step instead (600 × 48) gave 0.79, a higher lr worse (128 images each, GPU sweep).
    trainer: TrainerConfig = field(default_factory=lambda: _trainer(1200))
    # Held-out colour / pattern at 400 steps: lr 2e-3 constant 0.53 / 0.45, 4e-3 cosine
    # 0.73 / 0.42, 8e-3 cosine 0.44 / 0.25; at 800 steps 4e-3 cosine 0.75 / 0.53.
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=4e-3))
    lr_schedule: LrScheduleConfig = field(default_factory=lambda: LrScheduleConfig(name="cosine", warmup_steps=20))


@dataclass
class SDXLTrainingConfig:
    """The SDXL-architecture text-to-image pipeline. Trained on ground-truth attribute
    prompts; the text encoders are copies of the zoo CLIP's text tower (frozen) when
    ``text_encoders_from_clip``. Fine-tuning a ``base_model`` trains the UNet only."""

    base_model: str | None = None
    finetune: bool = False
    model: TinySDXLConfig = field(default_factory=TinySDXLConfig)
    text_encoders_from_clip: bool = True
    vae: VaeTrainingConfig = field(default_factory=VaeTrainingConfig)
    unet: UNetTrainingConfig = field(default_factory=UNetTrainingConfig)

    def validate(self) -> None:
        _check_base("sdxl.base_model", self.base_model)
        self.model.validate()
        _check_steps("sdxl.vae", self.vae.trainer, self.vae.batch_size)
        _check_steps("sdxl.unet", self.unet.trainer, self.unet.batch_size)
        self.vae.optimizer.validate()
        self.vae.lr_schedule.validate()
        self.unet.optimizer.validate()
        self.unet.lr_schedule.validate()
        if not 8 <= self.vae.crop_size <= self.model.image_size:
            raise ValueError("zoo.sdxl.vae.crop_size must be in [8, sdxl.model.image_size]")
        factor = 2 ** (len(self.model.vae_block_out_channels) - 1)
        if self.vae.crop_size % factor:
            raise ValueError(f"zoo.sdxl.vae.crop_size must be a multiple of the VAE factor {factor}")
        if not 0.0 <= self.unet.prompt_dropout < 1.0:
            raise ValueError("zoo.sdxl.unet.prompt_dropout must be in [0, 1)")
        if not 0.0 <= self.unet.ema_decay < 1.0:
            raise ValueError(f"zoo.sdxl.unet.ema_decay must be in [0, 1) (0: no average), not {self.unet.ema_decay}")
        if self.vae.colour_weight < 0 or self.vae.colour_pool < 1 or self.vae.crop_size % self.vae.colour_pool:
            raise ValueError("zoo.sdxl.vae.colour_weight must be >= 0 and zoo.sdxl.vae.colour_pool >= 1, dividing crop_size")
        if self.unet.snr_gamma < 0 or self.vae.kl_weight < 0 or self.unet.noise_offset < 0:
            raise ValueError("zoo.sdxl.unet.snr_gamma, zoo.sdxl.unet.noise_offset and zoo.sdxl.vae.kl_weight must be >= 0")


@dataclass
class CausalLMTrainingConfig:
    """Next-token training on catalog titles, descriptions and training-split reviews.

    A pretrained LLM copies words from its prompt; a tiny one trained on catalog texts alone
    never learns to (its continuation ignores the prompt), and then no preference token can
    steer it. So training starts with ``copy_warmup_steps`` of synthetic documents
    ``"User <word> would love: <a catalog title> <word>"`` (word: an attribute value), and a
    ``keyword_fraction`` of the catalog texts are prefixed by the generator's prompt holding
    their own attribute words (``"User silk vintage would love: review: I like the silk
    fabric."``); ``keyword_contexts`` are the prompt contexts of titles, descriptions and
    reviews (``generator.text.contexts``). Both need a dataset with item attributes.
    """

    base_model: str | None = None
    finetune: bool = False
    # 128 wide: at 64 the copy warm-up does not teach copying within 1,000 steps.
    model: TinyCausalLMConfig = field(default_factory=lambda: TinyCausalLMConfig(hidden_size=128, intermediate_size=352))
    batch_size: int = 32
    max_length: int = 64
    copy_warmup_steps: int = 1000
    keyword_fraction: float = 0.7
    keyword_contexts: list[str] = field(default_factory=lambda: ["", "description:", "review:"])
    trainer: TrainerConfig = field(default_factory=lambda: _trainer(500))
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-3, weight_decay=0.01))

    def validate(self) -> None:
        _check_base("lm.base_model", self.base_model)
        self.model.validate()
        _check_steps("lm", self.trainer, self.batch_size)
        self.optimizer.validate()
        if self.copy_warmup_steps < 0:
            raise ValueError(f"zoo.lm.copy_warmup_steps must be >= 0, got {self.copy_warmup_steps}")
        if not 0.0 <= self.keyword_fraction <= 1.0:
            raise ValueError(f"zoo.lm.keyword_fraction must be in [0, 1], got {self.keyword_fraction}")
        if len(self.keyword_contexts) != 3:
            raise ValueError("zoo.lm.keyword_contexts needs three entries: the prompt contexts of titles, descriptions, reviews")
        if not 8 <= self.max_length <= self.model.max_position_embeddings:
            raise ValueError("zoo.lm.max_length must be in [8, lm.model.max_position_embeddings]")


@dataclass
class JudgeModelConfig:
    """The attribute classifier: stride-2 conv layers of ``channels``, global pooling, one
    linear head per attribute."""

    image_size: int = 64
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64])

    def validate(self) -> None:
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError("zoo.judge.model.channels must be a non-empty list of positive ints")
        if self.image_size < 2 ** len(self.channels):
            raise ValueError("zoo.judge.model.image_size is too small for that many stride-2 layers")


@dataclass
class JudgeAugmentConfig:
    """Random perturbations of the judge's training images. The judge only ever sees clean
    catalog drawings, yet it scores generated images, which are shifted, rescaled, blurred,
    tinted, and often draw a pattern's light parts whiter than the catalog does; without
    these a judge that is perfect on catalog images misreads clearly striped generations.
    Each draws uniformly per image up to its bound (0 or 1 switches it off)."""

    noise_std: float = 0.1       # Gaussian pixel noise, std in [-1, 1] units
    max_shift: float = 0.08      # translation, as a fraction of the image side
    scale_jitter: float = 0.12   # zoom factor in [1 - s, 1 + s]
    contrast_jitter: float = 0.25
    gamma_jitter: float = 1.25   # gamma in [1 / g, g] on [0, 1] pixels
    tint_std: float = 0.04       # per-channel offset (a tinted background)
    max_blur: int = 5            # box blur of odd size up to this (1: none)
    whiten: float = 0.8          # pushes light pixels up to this share of the way to white

    def validate(self) -> None:
        for name in ("noise_std", "max_shift", "scale_jitter", "contrast_jitter", "tint_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"zoo.judge.augment.{name} must be >= 0")
        if self.scale_jitter >= 1 or self.contrast_jitter >= 1:
            raise ValueError("zoo.judge.augment.scale_jitter and contrast_jitter must be < 1")
        if self.gamma_jitter < 1:
            raise ValueError("zoo.judge.augment.gamma_jitter must be >= 1 (1: off)")
        if self.max_blur < 1 or self.max_blur % 2 == 0:
            raise ValueError("zoo.judge.augment.max_blur must be an odd int >= 1")
        if not 0 <= self.whiten <= 1:
            raise ValueError("zoo.judge.augment.whiten must be in [0, 1]")


@dataclass
class JudgeTrainingConfig:
    """The judge of personalization metrics: classifies ``attributes`` from an image,
    trained on ``augment``-perturbed catalog images. ``base_model`` is a judge folder saved
    by an earlier zoo. Besides ``attributes`` the judge reads every hidden visual attribute of
    the dataset (the sparse catalog's ``shade``): no text names those, so nothing else scores them.
    An attribute of the dataset's schema gets a single-label head, one only its items carry
    (MovieLens ``genres``, ``|``-separated) a multi-label head (``pmg.zoo.judge_recipe``); a
    dataset without images or without one of ``attributes`` gets no judge (zoo.json says why)."""

    base_model: str | None = None
    model: JudgeModelConfig = field(default_factory=JudgeModelConfig)
    attributes: list[str] = field(default_factory=lambda: ["category", "colour", "pattern"])
    batch_size: int = 64
    augment: JudgeAugmentConfig = field(default_factory=JudgeAugmentConfig)
    trainer: TrainerConfig = field(default_factory=lambda: _trainer(250))
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=3e-3, weight_decay=1e-4))

    def validate(self) -> None:
        if self.base_model is not None and not Path(self.base_model).expanduser().is_dir():
            raise ValueError(f"zoo.judge.base_model {self.base_model!r} is not an existing judge folder")
        self.model.validate()
        _check_steps("judge", self.trainer, self.batch_size)
        self.optimizer.validate()
        if not self.attributes:
            raise ValueError("zoo.judge.attributes must name at least one attribute")
        self.augment.validate()


@dataclass
class ZooEvalConfig:
    """Quality checks run at the end of the stage (figures land in ``zoo.json``; one that cannot
    be measured is null there, with the reason under ``metrics_missing``).
    CLIP retrieval ranks each held-out image against up to ``clip_candidates`` held-out captions,
    distinct ones (an attribute caption, else the title and attribute values); text-to-image
    draws ``t2i_images_per_combo`` images per held-out combination (0 skips it) and asks the judge.
    ``t2i_clip_items`` held-out items (0 skips it) get one image each from their caption, scored
    by the zoo CLIP against that caption and the item's real image, each beside another item's
    (the shuffled baseline), and drawn in ``heldout_samples.png``. The LM's held-out perplexity
    reads up to ``lm_heldout_texts`` held-out texts (0 skips it)."""

    clip_candidates: int = 100
    t2i_images_per_combo: int = 8
    # 8: a few seconds of generation with the default pipeline on two CPU cores.
    t2i_clip_items: int = 8
    lm_heldout_texts: int = 1000
    t2i_steps: int = 20
    guidance_scale: float = 3.0
    seed: int = 0

    def validate(self) -> None:
        if self.clip_candidates < 2:
            raise ValueError("zoo.eval.clip_candidates must be >= 2")
        if self.t2i_images_per_combo < 0 or self.t2i_steps < 1:
            raise ValueError("zoo.eval.t2i_images_per_combo must be >= 0 and t2i_steps >= 1")
        if self.t2i_clip_items == 1 or self.t2i_clip_items < 0:
            raise ValueError("zoo.eval.t2i_clip_items must be 0 (off) or >= 2 (the shuffled baseline pairs each item with another)")
        if self.lm_heldout_texts < 0:
            raise ValueError("zoo.eval.lm_heldout_texts must be >= 0 (0: off)")


@dataclass
class ZooConfig:
    """The zoo stage. Results are cached under ``cache_dir/<hash of data and config>``
    (shared across run directories); ``retrain`` ignores a cached entry. ``num_threads`` > 0
    sets torch's CPU threads for the stage (0 keeps torch's default)."""

    cache_dir: str = ".cache/pmg/zoo"
    retrain: bool = False
    num_threads: int = 0
    local_files_only: bool = True
    trust_remote_code: bool = False
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    tokenizers: TokenizerConfig = field(default_factory=TokenizerConfig)
    clip: ClipTrainingConfig = field(default_factory=ClipTrainingConfig)
    sdxl: SDXLTrainingConfig = field(default_factory=SDXLTrainingConfig)
    lm: CausalLMTrainingConfig = field(default_factory=CausalLMTrainingConfig)
    judge: JudgeTrainingConfig = field(default_factory=JudgeTrainingConfig)
    eval: ZooEvalConfig = field(default_factory=ZooEvalConfig)

    def validate(self) -> None:
        if not self.cache_dir.strip():
            raise ValueError("zoo.cache_dir must not be empty")
        if self.num_threads < 0:
            raise ValueError("zoo.num_threads must be >= 0")
        self.holdout.validate()
        self.tokenizers.validate()
        self.clip.validate()
        self.sdxl.validate()
        self.lm.validate()
        self.judge.validate()
        self.eval.validate()
