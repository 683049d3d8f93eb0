"""Category use cases: create versions with reference images, import description files,
warm the text features of new versions.

Prompt lengths are checked against the text tower's context here, so a category never
reaches the model with prompts the tokenizer would cut (agssp-spec §1.1, field-notes §A5).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.anomaly_map.config import AnomalyMapSettings
from services.anomaly_map.ml.clip.prompts import (
    CategoryDescription,
    Tokenizer,
    build_prompts,
    find_overlong_prompts,
    lower_token_bound,
    parse_descriptions,
    surely_overlong,
)
from services.anomaly_map.runtime.clip import text_tokenizer
from services.anomaly_map.runtime.engine import MapEngine
from services.anomaly_map.runtime.methods import method_for
from services.anomaly_map.stores.categories import (
    CategoryRecord,
    CategorySpec,
    CategoryStore,
    ReferenceImage,
    check_name,
    describe,
)
from shared.errors import InvalidInputError, NotFoundError, SuiteError
from shared.imaging.intake import ImageLimits, decode_image
from shared.storage.base import ObjectStore, validate_key

log = logging.getLogger(__name__)
_SHOWN_CHARS = 120


def prompt_tokenizer(settings: AnomalyMapSettings) -> Tokenizer:
    """The tokenizer used to check prompt lengths; needs no weights."""
    return text_tokenizer(settings)


def _shown(text: str) -> str:
    """A description string as quoted in an error: cut, so a huge one cannot flood the reply."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"


def _overlong_states(description: CategoryDescription, tokenizer: Tokenizer) -> list[str]:
    """Which description strings make prompts longer than the context (agssp-spec §1.1).

    A string too long to fit on its own (``surely_overlong``) is reported before any prompt
    is built or tokenised.
    """
    context = tokenizer.context_length
    name = description.name
    strings = [
        ("map", description.object_phrase),
        *((f"good[{i}]", t) for i, t in enumerate(description.good)),
        *((f"defect[{i}]", t) for i, t in enumerate(description.defect)),
    ]
    huge = [(where, t) for where, t in strings if surely_overlong(t, context)]
    if huge:
        return [
            f"{name}.{where} (over {lower_token_bound(t)} tokens): {_shown(t)}" for where, t in huge
        ]

    def longest(good: tuple[str, ...], defect: tuple[str, ...]) -> int:
        single = CategoryDescription(description.name, description.object_phrase, good, defect)
        prompts = build_prompts(single)
        overlong = find_overlong_prompts([*prompts.normal, *prompts.anomalous], tokenizer)
        return max((o.num_tokens for o in overlong), default=0)

    if tokens := longest((), ()):
        return [f"{name}.map ({tokens} tokens): {_shown(description.object_phrase)}"]
    found = []
    for i, state in enumerate(description.good):
        if tokens := longest((state,), ()):
            found.append(f"{name}.good[{i}] ({tokens} tokens): {_shown(state)}")
    for i, state in enumerate(description.defect):
        if tokens := longest((), (state,)):
            found.append(f"{name}.defect[{i}] ({tokens} tokens): {_shown(state)}")
    return found


def check_prompts(descriptions: Sequence[CategoryDescription], tokenizer: Tokenizer) -> None:
    """Refuse descriptions whose prompts the tokenizer would cut (never cut silently).

    Raises:
        InvalidInputError: ``prompt_too_long`` listing every offending string.
    """
    problems = [p for d in descriptions for p in _overlong_states(d, tokenizer)]
    if problems:
        raise InvalidInputError(
            f"{len(problems)} description string(s) give prompts longer than the "
            f"{tokenizer.context_length}-token context; shorten them: " + "; ".join(problems),
            code="prompt_too_long",
        )


def _reference(data: bytes, source: str, limits: ImageLimits) -> ReferenceImage:
    decoded = decode_image(data, limits)  # refuse bad references now, not at the first map
    return ReferenceImage(data=data, format=decoded.format, source=source)


def _stored_reference(store: ObjectStore, key: str, limits: ImageLimits) -> ReferenceImage:
    try:
        return _reference(store.get_bytes(validate_key(key)), key, limits)
    except NotFoundError as exc:
        raise InvalidInputError(
            f"reference image {key!r} is not in the object store", code="reference_not_found"
        ) from exc


def put_category(
    categories: CategoryStore,
    name: str,
    spec: CategorySpec,
    uploads: Sequence[tuple[str, bytes]] = (),
    *,
    tokenizer: Tokenizer,
    limits: ImageLimits,
    max_references: int,
) -> CategoryRecord:
    """Create a new version of ``name`` from ``spec`` plus uploaded reference images."""
    check_prompts([describe(check_name(name), spec)], tokenizer)
    if len(spec.references) + len(uploads) > max_references:
        raise InvalidInputError(
            f"at most {max_references} reference images per category",
            code="too_many_references",
        )
    refs = [_stored_reference(categories.store, key, limits) for key in spec.references]
    refs += [_reference(data, f"upload:{filename}", limits) for filename, data in uploads]
    return categories.create(name, spec, refs)


@dataclass
class ImportResult:
    """Categories created by an import and what was left out."""

    created: list[CategoryRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _sample_path(sample: str, data_root: Path | None) -> Path | str:
    """The local file of a ``samples`` entry, or the reason it is ignored."""
    if data_root is None:
        return "no data root is configured (ANOMALY_MAP_DATA_ROOT)"
    if Path(sample).is_absolute():
        return "absolute paths are not read (they point at the authors' machines)"
    root = data_root.expanduser().resolve()
    path = (root / sample).resolve()
    if not path.is_relative_to(root):
        return "it leaves the data root"
    return path if path.is_file() else f"it does not exist under {root}"


def import_descriptions(
    categories: CategoryStore,
    data: Mapping[str, Any],
    *,
    tokenizer: Tokenizer,
    limits: ImageLimits,
    data_root: Path | None,
    only: Sequence[str] = (),
    max_references: int = 16,
) -> ImportResult:
    """Import a description file as is (agssp-spec §2); all or nothing for prompt checks."""
    parsed = parse_descriptions(data)
    unknown = set(only) - set(parsed)
    if unknown:
        raise InvalidInputError(f"categories {sorted(unknown)} are not in the file")
    chosen = [parsed[n] for n in (only or list(parsed))]
    for description in chosen:
        check_name(description.name)
    check_prompts(chosen, tokenizer)
    result = ImportResult()
    for description in chosen:
        refs = []
        for sample in description.samples[:max_references]:
            path = _sample_path(sample, data_root)
            if isinstance(path, str):
                result.warnings.append(f"{description.name}: sample {sample!r} ignored: {path}")
                continue
            refs.append(_reference(path.read_bytes(), sample, limits))
        spec = CategorySpec(
            map=description.object_phrase,
            good=list(description.good),
            defect=list(description.defect),
        )
        result.created.append(categories.create(description.name, spec, refs))
    return result


def warm_text_features(engine: MapEngine, records: Sequence[CategoryRecord]) -> int:
    """Encode and store the text features of new category versions when CLIP is loaded.

    Never loads CLIP and never fails: without weights (or for methods without text) the
    features are computed on first use instead. Returns how many were computed or found stored.
    """
    if not engine.clip.is_loaded:
        return 0
    done = 0
    for record in records:
        if not method_for(record.method).needs.text:
            continue
        try:
            engine.text_features(record, record.method)
            done += 1
        except SuiteError as exc:
            log.warning("text features of %s/%s: %s", record.name, record.version, exc.message)
    return done
