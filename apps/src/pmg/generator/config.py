"""Configuration of the generator stage (every hyperparameter, nested by generator)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum

from pmg.data.ratings import InteractionWeight
from pmg.training import OptimizerConfig, TrainerConfig
from prefquant import DEFAULT_PREFIXES

__all__ = ["GenerationTarget", "ImagePromptForm", "LatentPriorTarget", "PromptMode", "TextTarget", "TextGeneratorConfig", "ImageGeneratorConfig", "SampleConfig", "BaselinesConfig",
           "KeywordConfig", "GeneratorConfig", "TEXT_TARGETS"]


class TextTarget(StrEnum):
    """An item text the LM can learn to write for a user (``generator.text.targets``)."""

    title = "title"
    description = "description"
    review = "review"


# The item texts the LM can learn to write for a user, in the order of ``TextGeneratorConfig.contexts``.
TEXT_TARGETS = tuple(t.value for t in TextTarget)


class GenerationTarget(StrEnum):
    """What the generators learn to write for a user (``generator.target``): ``history``, the
    user's liked training items; ``next_item``, the item the user takes next (the test row)."""

    history = "history"
    next_item = "next_item"


class LatentPriorTarget(StrEnum):
    """What the latent prior fits each training user's tokens to (``generator.image.latent_prior_target``).

    ``liked_images``: the mean latent of the user's liked images (rows S9 and S10 of
    docs/results.md): it holds the liked colours as well as what no word names, so its offsets
    also pull the image's colour away from the prompt's.
    ``beyond_words``: the same mean over each liked image's latent less the mean latent of the
    images (of the interactions it is fitted on) whose image words (colour, pattern) are the same: only what the words the
    prompt carries do not explain, as the image adapter's token rows learn (``item_word_keep`` 1).
    On the sparse catalog it drew the hidden shade for 0.615 of the evaluation users and their
    colour for 0.525, against 0.515 and 0.585 without a prior (docs/results.md, round 4, row G4).
    """

    liked_images = "liked_images"
    beyond_words = "beyond_words"


class ImagePromptForm(StrEnum):
    """Where the image subject stands in an image prompt (``generator.image.prompt_form``).

    ``subject_first``: the subject, then the user's tokens ("a red striped dress for <pv_0_3>";
    without tokens the subject alone), so that a prompt without tokens is the caption a
    text-to-image model is trained on, and with them begins like it (CLIP's text encoders read
    left to right: what follows does not change how the caption's words are encoded). The
    default: through the zoo's UNet, the dataset's noun in front ("a product: ...") cost up to a
    third of the prompted colour's and pattern's hits on combinations it was trained on, and the
    default's image personalization 0.10 on the default catalog (docs/results.md, round 4).
    ``noun_first``: the dataset's noun first ("a product for <pv_0_3>: a red striped dress", "a
    product: ..."), prefgen's default templates and rounds 1 to 3's prompts.
    """

    subject_first = "subject_first"
    noun_first = "noun_first"


class PromptMode(StrEnum):
    """What stands for a user in the generators' prompts (``generator.prompt``).

    ``tokens``: the user's discrete preference tokens alone (the method as designed).
    ``keywords_and_tokens``: the user's history keywords (``pmg.data.keywords``, read from the
    training split) in front of the tokens in the text prompt and as words of the image subject,
    with the tokens beside them: the generators train and generate with both, so the words give
    what a history names outright and the tokens what it does not (a taste only images show, a
    user with a short history). The default: on both catalog profiles it beats the tokens alone
    (docs/results.md). Its training words come from the dataset's attribute vocabulary; a dataset
    without one (MovieLens: free-text genres) gets free keyword terms at generation that its
    training prompts never held, so ``tokens`` is the safer mode there (not measured yet).
    """

    tokens = "tokens"
    keywords_and_tokens = "keywords_and_tokens"


@dataclass
class TextGeneratorConfig:
    """SFT of the causal LM: prompt with the user's tokens → a text of an item the user liked.

    ``modalities``: whose preference tokens go into the LM (their rows are added and trained).
    The visual ones too by default: the LM can only name the user's colour, which the image then
    shows (``ImageGeneratorConfig.subject_from_text``), if its prompt carries the visual taste.
    ``targets``: which texts of a liked item become SFT targets (one pair per non-empty text).
    ``contexts``: the prompt context per target, in the order of ``TEXT_TARGETS``, so that the
    LM knows which kind of text to write ("" for a title).
    ``audience``: who would love the item in the prompt of a user without tokens ("A viewer would
    love:"); None (default): the dataset's ``item_kind.audience``, else "A shopper"
    (:func:`pmg.generator.prompts.prompt_templates`).
    """

    enabled: bool = True
    modalities: list[str] = field(default_factory=lambda: ["textual", "visual"])
    targets: list[TextTarget] = field(default_factory=lambda: [TextTarget.title, TextTarget.review])
    contexts: list[str] = field(default_factory=lambda: ["", "description:", "review:"])
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    lr: float = 5e-3
    # The new token rows' learning rate (and the soft-prompt projector's, in the baseline).
    token_lr: float = 5e-2
    # New rows start at the mean embedding + this many per-dimension standard deviations of
    # Gaussian noise (prefgen.TokenInit): distinct rows let attention tell the users apart early.
    token_init_noise: float = 0.1
    # 600: at 200 the LM had not learnt to write the prompt's words (text material 0.54 vs 0.94, docs/results.md).
    max_steps: int = 600
    max_epochs: int = -1
    batch_size: int = 16
    max_length: int = 64
    # Share of examples trained without tokens, so that cold-start users get sensible text.
    no_token_fraction: float = 0.1
    audience: str | None = None

    def context_of(self, target: str) -> str:
        return self.contexts[TEXT_TARGETS.index(target)]

    def validate(self) -> None:
        unknown = [t for t in self.targets if t not in TEXT_TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"generator.text.targets {unknown or '[]'} must be among {list(TEXT_TARGETS)}")
        if len(self.contexts) != len(TEXT_TARGETS):
            raise ValueError(f"generator.text.contexts needs one entry per {list(TEXT_TARGETS)}")
        _check_common("text", self.modalities, self.lr, self.max_steps, self.max_epochs, self.batch_size, self.no_token_fraction)
        if self.token_lr <= 0 or self.token_init_noise < 0:
            raise ValueError(f"generator.text.token_lr must be > 0 and token_init_noise >= 0, got {self.token_lr}, {self.token_init_noise}")
        if self.audience is not None and not self.audience.strip():
            raise ValueError("generator.text.audience must be a phrase (\"A viewer\") or null (the dataset's)")
        if self.lora_r < 0 or self.max_length < 4:
            raise ValueError("generator.text.lora_r must be >= 0 (0: no LoRA) and max_length >= 4")


@dataclass
class ImageGeneratorConfig:
    """Textual inversion of the users' visual tokens in the SDXL pipeline (+ optional UNet LoRA).

    ``default_subject``: the image subject of items without one of their own (the catalog's
    ``category``), and the noun that opens every image prompt with ``prompt_form`` ``noun_first``
    ("a movie poster for <pv_0_1>: ...").
    None (default): the dataset's (``item_kind.subject`` in its ``dataset.json``, set by its loader
    or by ``data.item_kind.subject``), else "a product" (:func:`pmg.data.subjects.image_subject`).
    Set here it overrides the dataset's for this stage and those after it, not for the zoo's
    captions, which come before: ``data.item_kind.subject`` changes both.
    ``prompt_form``: where the subject stands in the prompt (:class:`ImagePromptForm`).
    ``subject_from_text``: dataset attributes (e.g. ``colour``) whose value the user's generated
    text names is put into the image subject at generation time ("a jacket" → "an orange
    jacket"), so that the image shows what the text says (the text is written first); the
    training prompts name what each liked item's own text names, so that the adapter learns to
    follow those words. Empty: image and text are generated independently, and agree only as
    far as their tokens do.
    ``item_word_keep``: with ``keywords_and_tokens``, the share of a liked item's own words kept
    in this adapter's training prompts; None: ``generator.item_word_keep``, as the text adapter.
    At 1 (default) every word the image prompt can carry is always there, so the token rows learn
    only what no word says (the sparse catalog's hidden shade) and never to stand in for a word
    the prompt gives: at 0.5 they learned to pull the colour toward the training users' and drew
    the sparse catalog's evaluation users' colour less often than the words alone (docs/results.md,
    round 4, row G3).
    ``latent_prior``: fit a latent prior (:mod:`pmg.generator.latent_prior`: per-token offsets of
    the initial latents, for visual tastes the text encoders cannot ask for). Off by default: on
    the sparse catalog it drew the hidden shade more often but colour and pattern less, and did
    not raise the image's personalization (docs/results.md, rows S9, S10 and G4).
    ``latent_prior_scales``: its candidate scales (and the history-latent baseline's); the one
    whose images show the selection users' visual tastes most often is kept (0: no prior).
    Without a judge and ground-truth tastes to choose by, the first is kept.
    ``latent_prior_target``: what the prior is fitted to (:class:`LatentPriorTarget`).
    ``latent_prior_ridge``: its ridge penalty; ``latent_prior_rank``: how many latent directions its
    offsets may move along (0: every channel; :func:`prefgen.fit_latent_prior`).
    """

    enabled: bool = True
    modalities: list[str] = field(default_factory=lambda: ["visual"])
    lr: float = 5e-3
    max_steps: int = 200
    max_epochs: int = -1
    batch_size: int = 16
    unet_lora_r: int = 0  # 0: no UNet LoRA, only the token rows train
    unet_lora_alpha: int = 0  # 0: alpha = r
    default_subject: str | None = None
    prompt_form: ImagePromptForm = ImagePromptForm.subject_first
    no_token_fraction: float = 0.1
    subject_from_text: list[str] = field(default_factory=lambda: ["colour"])
    item_word_keep: float | None = 1.0
    latent_prior: bool = False
    latent_prior_scales: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0])
    latent_prior_ridge: float = 1.0
    latent_prior_rank: int = 1
    latent_prior_target: LatentPriorTarget = LatentPriorTarget.liked_images

    def validate(self) -> None:
        scales = self.latent_prior_scales
        if not scales or any(not scale >= 0 for scale in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"generator.image.latent_prior_scales must be one or more distinct numbers >= 0, got {scales!r}")
        if self.latent_prior_rank < 0:
            raise ValueError(f"generator.image.latent_prior_rank must be >= 0 (0: every latent channel), got {self.latent_prior_rank}")
        if self.item_word_keep is not None and not 0.0 <= self.item_word_keep <= 1.0:
            raise ValueError(f"generator.image.item_word_keep must be in [0, 1] or null (generator.item_word_keep), got {self.item_word_keep}")
        if not self.latent_prior_ridge > 0:
            raise ValueError(f"generator.image.latent_prior_ridge must be > 0, got {self.latent_prior_ridge}")
        _check_common("image", self.modalities, self.lr, self.max_steps, self.max_epochs, self.batch_size, self.no_token_fraction)
        if self.default_subject is not None and not self.default_subject.strip():
            raise ValueError("generator.image.default_subject must be a phrase (\"a movie poster\") or null (the dataset's)")
        if self.unet_lora_r < 0 or self.unet_lora_alpha < 0:
            raise ValueError("generator.image.unet_lora_r and unet_lora_alpha must be >= 0")
        if any(not isinstance(a, str) or not a.strip() for a in self.subject_from_text) or len(set(self.subject_from_text)) != len(self.subject_from_text):
            raise ValueError(f"generator.image.subject_from_text must list distinct attribute names, got {self.subject_from_text!r}")


@dataclass
class SampleConfig:
    """The sample generations written after training (a handful of users + one cold start)."""

    num_users: int = 4
    num_inference_steps: int = 20
    # 2: the tiny zoo UNet oversaturates colours at higher guidance; on 200 training users the judge
    # read the user's colour 0.91 at 2, 0.835 at 5 (benchmarks/image_guidance.py --role training).
    guidance_scale: float = 2.0
    max_new_tokens: int = 24
    # Texts of at least this many tokens: greedy decoding of a briefly tuned LM may otherwise
    # pick end of text first (an empty title); see TextPreferenceAdapter.generate.
    min_new_tokens: int = 1
    seed: int = 0


@dataclass
class BaselinesConfig:
    """Baselines trained beside the token adapters, for the benchmarks and ``pmg evaluate``.

    ``soft_prompt``: the continuous baseline: each user's preference vector (the preference
    stage's, no quantization; the modalities of each generator) through a trained linear map
    into ``soft_prompt_slots`` input embeddings of the LM / of each CLIP text encoder, in
    place of the discrete tokens; same LoRA options, steps and batches as the token adapters.
    Off by default: it doubles the stage's time (``benchmarks/generation.py`` trains it when needed).
    """

    soft_prompt: bool = False
    soft_prompt_slots: int = 2

    def validate(self) -> None:
        if self.soft_prompt_slots < 1:
            raise ValueError(f"generator.baselines.soft_prompt_slots must be >= 1, got {self.soft_prompt_slots}")


@dataclass
class KeywordConfig:
    """How a user's history keywords are read (``generator.keywords``), wherever words stand for
    the user: the ``keywords_and_tokens`` prompts the generators train and generate with, and the
    keyword baselines of ``pmg evaluate``, which read them the same way so that the comparison is
    fair. ``weight``: how much each training interaction counts in the vote
    (:class:`pmg.data.ratings.InteractionWeight`): ``binary``, a plain majority; ``rating``, what
    the user rated high counts more (``max(rating - rating_offset, 0)``), the default: on the sparse
    catalog it lifts every keyword variant (docs/results.md); a dataset without ratings gets a
    plain vote either way.
    """

    weight: InteractionWeight = InteractionWeight.rating
    rating_offset: float = 2.0

    def validate(self) -> None:
        if self.weight not in tuple(InteractionWeight):  # a config built directly in Python
            raise ValueError(f"generator.keywords.weight must be one of {[w.value for w in InteractionWeight]}, not {self.weight!r}")


@dataclass
class GeneratorConfig:
    """Stage "generator": train the text adapter, then the image adapter, on the users' tokens.

    ``target``: "history" (liked training items, rating >= ``min_rating`` when known) or
    "next_item" (each user's held-out next item). ``prompt``: what stands for the user in
    the prompts (:class:`PromptMode`). ``item_word_keep``: with ``keywords_and_tokens``, each
    text training example's prompt carries each of the liked item's own attribute words with this
    probability (:class:`pmg.generator.prompts.ItemWords`): the text adapter learns to follow the
    words, and to read the user's tokens for what the words leave out. The image adapter has its
    own share, ``image.item_word_keep``. Only the data stage's training users
    (``data.users``, ``<run>/data/user_roles.json``) are trained on, so that selection and
    evaluation see users, and token combinations, the generators never saw.
    ``optimizer`` gives the optimizer name
    (including ``bnb.AdamW8bit``), betas and weight decay; each generator sets its own lr.
    ``trainer`` gives strategy (``ddp``…), devices, precision and seed; each generator sets
    its own ``max_steps`` / ``max_epochs``.
    """

    target: GenerationTarget = GenerationTarget.history
    min_rating: float = 4.0
    prompt: PromptMode = PromptMode.keywords_and_tokens
    item_word_keep: float = 0.5
    keywords: KeywordConfig = field(default_factory=KeywordConfig)
    text: TextGeneratorConfig = field(default_factory=TextGeneratorConfig)
    image: ImageGeneratorConfig = field(default_factory=ImageGeneratorConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    # A killed fit resumes from its last checkpoint: every checkpoint_every_n_steps batches and at each epoch end.
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_epochs=-1, max_steps=200, log_every_n_steps=10,
                                                                         checkpoint_every_n_steps=50))
    num_workers: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.item_word_keep <= 1.0:
            raise ValueError(f"generator.item_word_keep must be in [0, 1], got {self.item_word_keep}")
        if self.target not in tuple(GenerationTarget):  # a config built directly in Python
            raise ValueError(f"generator.target must be one of {[t.value for t in GenerationTarget]}, not {self.target!r}")
        if not (self.text.enabled or self.image.enabled):
            raise ValueError("generator: enable at least one of text and image")
        self.keywords.validate()
        self.text.validate()
        self.image.validate()
        self.baselines.validate()
        self.optimizer.validate()
        self.trainer.validate()
        if self.sample.num_users < 0 or self.sample.num_inference_steps < 1 or self.sample.max_new_tokens < 1:
            raise ValueError("generator.sample: num_users >= 0, num_inference_steps >= 1, max_new_tokens >= 1")
        if not 0 <= self.sample.min_new_tokens <= self.sample.max_new_tokens:
            raise ValueError("generator.sample.min_new_tokens must be in [0, max_new_tokens]")

    def trainer_for(self, steps: int, epochs: int) -> TrainerConfig:
        """The shared trainer options with one generator's step/epoch budget."""
        return dataclasses.replace(self.trainer, max_steps=steps, max_epochs=epochs)

    def optimizer_for(self, lr: float) -> OptimizerConfig:
        return dataclasses.replace(self.optimizer, lr=lr)


def _check_common(name: str, modalities: list[str], lr: float, steps: int, epochs: int, batch: int, no_token: float) -> None:
    unknown = [m for m in modalities if m not in DEFAULT_PREFIXES]
    if unknown or not modalities:
        raise ValueError(f"generator.{name}.modalities {unknown or '[]'} must be among {sorted(DEFAULT_PREFIXES)}")
    if lr <= 0 or batch < 1:
        raise ValueError(f"generator.{name}: lr must be > 0 and batch_size >= 1")
    if steps < 1 and epochs < 1:
        raise ValueError(f"generator.{name}: set max_steps >= 1 or max_epochs >= 1")
    if not 0.0 <= no_token < 1.0:
        raise ValueError(f"generator.{name}.no_token_fraction must be in [0, 1)")
