"""Tokenizers trained offline with the ``tokenizers`` library, as real transformers tokenizers.

No model hub is reachable in the embedded setting, so the zoo trains its own tokenizers on
the catalog texts. Each trainer reproduces the pre-processing of the real tokenizer class
(normaliser, pre-tokeniser, BPE options) so that the result *is* an instance of that class,
saved with ``save_pretrained`` and read back with ``from_pretrained`` / ``AutoTokenizer``:

- :func:`train_clip_tokenizer` → ``CLIPTokenizer`` (lower-cased byte-level BPE with the
  ``</w>`` end-of-word suffix, ``<|startoftext|>`` / ``<|endoftext|>``), as in CLIP and SDXL.
- :func:`train_causal_lm_tokenizer` → ``Qwen2Tokenizer`` (byte-level BPE, ``<|endoftext|>``
  as end of text and padding), as in Qwen2 causal LMs.

:func:`load_tokenizer` takes either a folder written here or a real tokenizer folder / hub
id, so a real tokenizer replaces a trained one by configuration.

transformers 5 trap: ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently ignores both
files; build with ``CLIPTokenizer(vocab=dict, merges=list)`` or ``from_pretrained(folder)``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import AutoTokenizer, CLIPTokenizer, PreTrainedTokenizerBase, Qwen2Tokenizer

__all__ = [
    "CLIP_BOS",
    "CLIP_EOS",
    "LM_EOS",
    "TokenizerError",
    "train_clip_tokenizer",
    "train_causal_lm_tokenizer",
    "load_tokenizer",
]

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
LM_EOS = "<|endoftext|>"
_CLIP_SUFFIX = "</w>"
# The split regex of transformers' CLIPTokenizer: special tokens, contractions, letters, single digits, symbols.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# The split regex of transformers' Qwen2Tokenizer.
_QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained (no text, vocabulary too small) or loaded."""


def _vocab_and_merges(tokenizer: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges  # type: ignore[return-value]


def _complete_alphabet(vocab: dict[str, int], symbols: Iterable[str]) -> dict[str, int]:
    # Every byte symbol must be in the vocabulary, or a character unseen in training becomes
    # the unknown token; real CLIP vocabularies list all 256 (plus their "</w>" forms) too.
    vocab = dict(vocab)
    for symbol in symbols:
        if symbol not in vocab:
            vocab[symbol] = len(vocab)
    return vocab


def _texts(texts: Iterable[str]) -> list[str]:
    kept = [t for t in texts if t and t.strip()]
    if not kept:
        raise TokenizerError("cannot train a tokenizer on no text: every given text is empty")
    return kept


def _deterministic_bpe_merges(words: Counter[str], max_merges: int) -> list[tuple[str, str]]:
    """BPE merges over ``words`` (pre-tokenised, with counts); each word ends in ``</w>``.

    ``tokenizers``' own trainer breaks ties between equally frequent pairs by symbol ids it
    assigns in hash order when end-of-word suffixes are on, so the same texts gave a different
    CLIP tokenizer (and so a different zoo) on every run. Here ties go to the
    lexicographically smallest pair.
    """
    pieces = [[*word[:-1], word[-1] + _CLIP_SUFFIX] for word in words]
    counts = list(words.values())
    pairs: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for index, piece in enumerate(pieces):
        for pair in zip(piece, piece[1:], strict=False):
            pairs[pair] += counts[index]
            where[pair].add(index)
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges and pairs:
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for index in sorted(where.pop(best)):
            piece = pieces[index]
            for pair in zip(piece, piece[1:], strict=False):
                pairs[pair] -= counts[index]
                if pairs[pair] <= 0:
                    del pairs[pair]
            merged, i = [], 0
            while i < len(piece):
                if i + 1 < len(piece) and (piece[i], piece[i + 1]) == best:
                    merged.append(piece[i] + piece[i + 1])
                    i += 2
                else:
                    merged.append(piece[i])
                    i += 1
            pieces[index] = merged
            for pair in zip(merged, merged[1:], strict=False):
                pairs[pair] += counts[index]
                where[pair].add(index)
    return merges


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int = 1024, model_max_length: int = 77) -> CLIPTokenizer:
    """Train a CLIP byte-level BPE tokenizer on ``texts``.

    Args:
        texts: training texts (catalog titles, descriptions, captions).
        vocab_size: target size including the 512 byte symbols (plain and ``</w>``) and the
            two special tokens; must leave room for merges.
        model_max_length: the padded length of the text encoders (CLIP uses 77).

    Returns:
        A ``CLIPTokenizer`` with ``<|startoftext|>`` / ``<|endoftext|>`` (also padding).
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    floor = 2 * len(alphabet) + 2
    if vocab_size <= floor:
        raise TokenizerError(f"CLIP tokenizer vocab_size {vocab_size} must exceed {floor} (byte symbols + specials)")
    kept = _texts(texts)
    # CLIPTokenizer's own normaliser and pre-tokeniser; the merges are learnt below.
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    words: Counter[str] = Counter()
    for text in kept:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    symbols = sorted(alphabet) + [a + _CLIP_SUFFIX for a in sorted(alphabet)]
    merges = _deterministic_bpe_merges(words, vocab_size - len(symbols) - 2)
    vocab: dict[str, int] = {}
    for token in [CLIP_BOS, CLIP_EOS, *symbols, *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))  # two merges can spell the same token
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def train_causal_lm_tokenizer(texts: Iterable[str], vocab_size: int = 2048, model_max_length: int = 512) -> Qwen2Tokenizer:
    """Train a Qwen2-style byte-level BPE tokenizer on ``texts``.

    Returns a ``Qwen2Tokenizer`` whose ``<|endoftext|>`` is end of text, unknown and padding
    (Qwen2 has no beginning-of-text token); ``vocab_size`` counts the 256 byte symbols.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    floor = len(alphabet) + 1
    if vocab_size <= floor:
        raise TokenizerError(f"causal-LM tokenizer vocab_size {vocab_size} must exceed {floor} (byte symbols + specials)")
    kept = _texts(texts)
    backend = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix=""))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=vocab_size, special_tokens=[LM_EOS], initial_alphabet=alphabet, show_progress=False
    )
    backend.train_from_iterator(kept, trainer=trainer)
    vocab, merges = _vocab_and_merges(backend)
    vocab = _complete_alphabet(vocab, sorted(alphabet))
    return Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def load_tokenizer(
    path_or_id: str | Path,
    *,
    subfolder: str = "",
    local_files_only: bool = True,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """A tokenizer folder saved here, a real tokenizer folder, or a hub id, via ``AutoTokenizer``.

    ``subfolder`` reads e.g. ``tokenizer_2`` of a diffusers pipeline folder. Raises
    ``TokenizerError`` naming the path when it does not exist or holds no tokenizer.
    """
    text = str(path_or_id)
    local = Path(text)
    if local.exists() or text.startswith((".", "/", "~")):
        folder = local.expanduser() / subfolder if subfolder else local.expanduser()
        if not folder.is_dir():
            raise TokenizerError(f"tokenizer folder {folder} does not exist")
        if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            raise TokenizerError(f"{folder} holds no tokenizer (no tokenizer.json, tokenizer_config.json or vocab.json)")
    try:
        return AutoTokenizer.from_pretrained(
            text, subfolder=subfolder, local_files_only=local_files_only, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise TokenizerError(f"cannot load a tokenizer from {text!r}{f' (subfolder {subfolder})' if subfolder else ''}: {err}") from err
