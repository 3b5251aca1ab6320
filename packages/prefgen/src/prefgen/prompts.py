"""Prompt builders: user preference tokens placed in natural prompts for both modalities.

A user's token fragment (``"<pv_0_3><pv_1_9>"`` from ``PreferenceTokenizer.prompt_fragment``,
a list of tokens, or soft-prompt placeholders) is put into a template:

- image: ``"a product for <pv_0_3><pv_1_9>: a dress"``
- text: ``"User <pt_0_5><pt_1_2> would love:"`` (the LM continues with ``" a red dress"``)

A user without tokens (cold start, or the no-token baseline) gets the no-token variant of
the same template (``"a product: a dress"``), which is still a valid prompt.

The default templates speak of products; items of another kind get templates of their own, e.g.
``PromptTemplates(image="a movie poster for {tokens}: {subject}", image_no_tokens="a movie poster:
{subject}", text_no_tokens="A viewer would love: {context}")``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PromptTemplates", "build_image_prompt", "build_text_prompt", "describe_subject", "token_fragment"]


def token_fragment(tokens: str | Sequence[str] | None) -> str:
    """A fragment string from a fragment, a token list, or ``None`` (no tokens → ``""``)."""
    if tokens is None:
        return ""
    if isinstance(tokens, str):
        return tokens.strip()
    return "".join(t.strip() for t in tokens)


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@dataclass(frozen=True)
class PromptTemplates:
    """Templates with ``{tokens}`` (the user's fragment) and ``{subject}`` / ``{context}``.

    ``image`` / ``text`` are used when the user has tokens; ``image_no_tokens`` /
    ``text_no_tokens`` when not (they must not contain ``{tokens}``).
    """

    image: str = "a product for {tokens}: {subject}"
    image_no_tokens: str = "a product: {subject}"
    text: str = "User {tokens} would love: {context}"
    text_no_tokens: str = "A shopper would love: {context}"

    def __post_init__(self) -> None:
        allowed = {"image": {"tokens", "subject"}, "text": {"tokens", "context"}}
        for name in ("image", "image_no_tokens", "text", "text_no_tokens"):
            fields = _fields(getattr(self, name))
            kind = name.split("_")[0]
            unknown = fields - allowed[kind]
            if unknown:
                raise ValueError(f"prompt template {name!r} has unknown fields {sorted(unknown)}; allowed: {sorted(allowed[kind])}")
            if name.endswith("no_tokens") and "tokens" in fields:
                raise ValueError(f"prompt template {name!r} is for users without tokens and must not contain {{tokens}}")
            if not name.endswith("no_tokens") and "tokens" not in fields:
                raise ValueError(f"prompt template {name!r} must contain {{tokens}}")


DEFAULT_TEMPLATES = PromptTemplates()


def _tidy(text: str) -> str:
    # An empty subject/context leaves doubled or trailing spaces. A trailing space is never
    # kept: byte-level BPE LMs attach the space to the next word (" a"), so a prompt ending
    # in a space makes an unnatural split; continuations should start with a space instead.
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def describe_subject(subject: str, words: Sequence[str]) -> str:
    """``subject`` with ``words`` put before its noun: ``("a jacket", ["orange"])`` → ``"an orange jacket"``.

    Carries what a generated text says about a product (e.g. the colour it names) into the image
    prompt, so that image and text agree. The article ``a``/``an`` is kept and made to fit the
    first word; a subject without one gets the words in front. Empty words are skipped.
    """
    words = [w.strip() for w in words if w and w.strip()]
    subject = subject.strip()
    if not words:
        return subject
    article, _, noun = subject.partition(" ")
    if article.lower() not in ("a", "an") or not noun:
        return " ".join([*words, subject])
    fitted = "an" if words[0][0].lower() in "aeiou" else "a"
    if article[0].isupper():
        fitted = fitted.capitalize()
    return " ".join([fitted, *words, noun])


def build_image_prompt(subject: str, tokens: str | Sequence[str] | None = None, templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """An image prompt for ``subject`` (e.g. ``"a dress"``) personalised by ``tokens`` (none: cold start)."""
    fragment = token_fragment(tokens)
    if fragment:
        return _tidy(templates.image.format(tokens=fragment, subject=subject.strip()))
    return _tidy(templates.image_no_tokens.format(subject=subject.strip()))


def build_text_prompt(tokens: str | Sequence[str] | None = None, context: str = "", templates: PromptTemplates = DEFAULT_TEMPLATES) -> str:
    """A causal-LM prompt for a user's ``tokens`` (none: cold start), e.g. ``"User <pt_0_5><pt_1_2> would love:"``.

    Surrounding whitespace is stripped: continuations (SFT targets) should start with a space.
    """
    fragment = token_fragment(tokens)
    if fragment:
        return _tidy(templates.text.format(tokens=fragment, context=context.strip()))
    return _tidy(templates.text_no_tokens.format(context=context.strip()))
