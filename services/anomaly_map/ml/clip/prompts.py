"""Defect-description parsing and KeAD prompt ensembles (agssp-spec §1.5, §2).

Pure strings: the only model-side dependency is a tokenizer, used to measure prompt length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from shared.errors import InvalidInputError

SLOT = "{}"

# agssp-spec §1.5: the 4 generic WinCLIP states, before the description's own states.
GENERIC_NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}")
GENERIC_ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")

# agssp-spec §1.5: the 21-template ensemble; the jpeg template is listed twice on purpose,
# which weights it double in the mean embedding exactly as the reference does.
TEMPLATES = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)

_CATEGORY_KEYS = frozenset({"des", "map", "samples"})
_DES_KEYS = frozenset({"good", "defect"})


class Tokenizer(Protocol):
    """The part of open_clip's ``SimpleTokenizer`` that we use."""

    context_length: int

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids, shape (N, context_length), cut to the context when too long."""
        ...

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start/end tokens."""
        ...


@dataclass(frozen=True)
class CategoryDescription:
    """One category of a description file (agssp-spec §2).

    Attributes:
        name: category id, the key in the JSON file.
        object_phrase: the ``map`` phrase put into every ``{}`` slot.
        good: extra normal states, each with one ``{}`` slot.
        defect: extra anomalous states, each with one ``{}`` slot.
        samples: paths of defect-free reference images, as written in the file.
    """

    name: str
    object_phrase: str
    good: tuple[str, ...]
    defect: tuple[str, ...]
    samples: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """SHA-256 of everything that changes the text features (a cache key)."""
        payload = {"map": self.object_phrase, "good": self.good, "defect": self.defect}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class PromptSets:
    """The three prompt sets of one category; each is states x templates, in that order."""

    normal: tuple[str, ...]
    anomalous: tuple[str, ...]
    empty: tuple[str, ...]


@dataclass(frozen=True)
class OverlongPrompt:
    """A prompt that does not fit the text tower's context (it would be cut)."""

    prompt: str
    num_tokens: int


def _string_list(value: object, where: str, *, with_slot: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(f"{where} must be a list of strings")
    if with_slot:
        for i, item in enumerate(value):
            if item.count(SLOT) != 1:
                raise InvalidInputError(f"{where}[{i}] must contain exactly one '{{}}': {item!r}")
    return tuple(value)


def parse_category(name: str, value: object) -> CategoryDescription:
    """Validate one ``{des: {good, defect}, map, samples}`` entry.

    Raises:
        InvalidInputError: a key is missing, unknown or of the wrong type; the message
            names the offending path (e.g. ``casting_billet.des.good[3]``).
    """
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{name} must be an object")
    unknown = set(value) - _CATEGORY_KEYS
    if unknown or not {"des", "map"} <= set(value):
        raise InvalidInputError(
            f"{name} needs keys des, map (and optional samples); got {sorted(value)}"
        )
    des = value["des"]
    if not isinstance(des, Mapping) or set(des) != _DES_KEYS:
        raise InvalidInputError(f"{name}.des must be an object with exactly good and defect")
    phrase = value["map"]
    if not isinstance(phrase, str) or not phrase.strip():
        raise InvalidInputError(f"{name}.map must be a non-empty string")
    return CategoryDescription(
        name=name,
        object_phrase=phrase,
        good=_string_list(des["good"], f"{name}.des.good", with_slot=True),
        defect=_string_list(des["defect"], f"{name}.des.defect", with_slot=True),
        samples=_string_list(value.get("samples", []), f"{name}.samples", with_slot=False),
    )


def parse_descriptions(data: Mapping[str, object]) -> dict[str, CategoryDescription]:
    """Parse a whole description file (already decoded from JSON) into categories."""
    if not isinstance(data, Mapping) or not data:
        raise InvalidInputError("a description file must be a non-empty object keyed by category")
    return {str(name): parse_category(str(name), value) for name, value in data.items()}


def _fill(states: Sequence[str], phrase: str) -> list[str]:
    # str.replace rather than str.format: descriptions may hold other braces.
    filled = [state.replace(SLOT, phrase, 1) for state in states]
    return [template.replace(SLOT, state, 1) for state in filled for template in TEMPLATES]


def build_prompts(description: CategoryDescription) -> PromptSets:
    """Expand a category into its normal, anomalous and empty prompt sets (agssp-spec §1.5)."""
    phrase = description.object_phrase
    return PromptSets(
        normal=tuple(_fill((*GENERIC_NORMAL_STATES, *description.good), phrase)),
        anomalous=tuple(_fill((*GENERIC_ANOMALOUS_STATES, *description.defect), phrase)),
        empty=tuple(template.replace(SLOT, "", 1) for template in TEMPLATES),
    )


def prompt_counts(description: CategoryDescription) -> tuple[int, int]:
    """Number of (normal, anomalous) prompts, e.g. (252, 210) for casting_billet."""
    prompts = build_prompts(description)
    return len(prompts.normal), len(prompts.anomalous)


# The longest CLIP BPE vocabulary entry is 32 characters, and the tokenizer's clean-up can
# shrink text at most 5-fold ("&amp;" -> "&"), so a token never covers more than 160
# non-space characters of the input.
MAX_CHARS_PER_TOKEN = 32 * 5


def lower_token_bound(text: str) -> int:
    """A cheap lower bound of the BPE tokens of ``text`` (linear time, no tokenizer call)."""
    nonspace = sum(len(word) for word in text.split())
    return -(-nonspace // MAX_CHARS_PER_TOKEN)


def surely_overlong(text: str, context_length: int) -> bool:
    """True when ``text`` cannot fit the context whatever the tokenizer does.

    Checked before tokenising, so a megabyte of prompt is refused in microseconds instead of
    being run through BPE once per template.
    """
    return lower_token_bound(text) + 2 > context_length


def find_overlong_prompts(
    prompts: Sequence[str], tokenizer: Tokenizer, context_length: int | None = None
) -> list[OverlongPrompt]:
    """Prompts whose token count (with start and end tokens) exceeds the context length.

    Prompts too long to fit by ``surely_overlong`` are not tokenised; their count is the
    lower bound.
    """
    limit = context_length if context_length is not None else tokenizer.context_length
    unique = dict.fromkeys(prompts)  # duplicate templates would be reported twice
    counts = (
        (p, lower_token_bound(p) + 2 if surely_overlong(p, limit) else len(tokenizer.encode(p)) + 2)
        for p in unique
    )
    return [OverlongPrompt(prompt=p, num_tokens=n) for p, n in counts if n > limit]


def check_prompt_lengths(
    prompts: Sequence[str],
    tokenizer: Tokenizer,
    *,
    strict: bool,
    context_length: int | None = None,
) -> list[OverlongPrompt]:
    """Report prompts the tokenizer would cut; never cut silently (field-notes §A5).

    Args:
        prompts: prompts to check.
        tokenizer: the tokenizer the text tower uses.
        strict: raise instead of returning when any prompt is too long.
        context_length: override of the tokenizer's context length.

    Returns:
        The overlong prompts with their token counts (empty when all fit).

    Raises:
        InvalidInputError: ``strict`` and at least one prompt is too long.
    """
    overlong = find_overlong_prompts(prompts, tokenizer, context_length)
    if overlong and strict:
        limit = context_length if context_length is not None else tokenizer.context_length
        shown = "; ".join(f"{o.num_tokens} tokens: {o.prompt!r}" for o in overlong[:3])
        raise InvalidInputError(
            f"{len(overlong)} prompt(s) exceed the {limit}-token context and would be cut "
            f"({shown}). Shorten the description.",
            code="prompt_too_long",
        )
    return overlong
