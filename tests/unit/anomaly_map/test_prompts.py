"""Description parsing, prompt ensembles and the prompt-length report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from open_clip.tokenizer import SimpleTokenizer

from services.anomaly_map.ml.clip.prompts import (
    TEMPLATES,
    CategoryDescription,
    build_prompts,
    check_prompt_lengths,
    find_overlong_prompts,
    parse_category,
    parse_descriptions,
    prompt_counts,
)
from shared.errors import InvalidInputError


@pytest.fixture(scope="module")
def tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer(context_length=77)


def _load(shared_data: Path, name: str) -> dict[str, CategoryDescription]:
    text = (shared_data / "descriptions" / name).read_text(encoding="utf-8")
    return parse_descriptions(json.loads(text))


def _category(good: list[str], defect: list[str]) -> CategoryDescription:
    return parse_category("part", {"des": {"good": good, "defect": defect}, "map": "metal surface"})


def test_casting_billet_has_252_normal_and_210_anomalous_prompts(shared_data: Path) -> None:
    # given
    categories = _load(shared_data, "metal_datasets_descriptions_with_samples.json")

    # when
    counts = prompt_counts(categories["casting_billet"])

    # then
    assert counts == (252, 210)


def test_the_template_ensemble_has_21_entries_with_one_duplicate() -> None:
    # given / when
    distinct = set(TEMPLATES)

    # then
    assert len(TEMPLATES) == 21
    assert len(distinct) == 20
    assert TEMPLATES.count("a jpeg corrupted photo of the {}.") == 2


def test_states_are_filled_with_the_object_phrase_then_templated() -> None:
    # given
    category = _category(["{} without any flaw"], ["{} with scratch defect"])

    # when
    prompts = build_prompts(category)

    # then
    assert prompts.normal[0] == "a cropped photo of the metal surface."
    assert prompts.normal[21] == "a cropped photo of the flawless metal surface."
    assert (
        prompts.normal[-1] == "a photo of a metal surface without any flaw for anomaly detection."
    )
    assert prompts.anomalous[0] == "a cropped photo of the damaged metal surface."
    assert prompts.anomalous[-21] == "a cropped photo of the metal surface with scratch defect."
    assert len(prompts.normal) == 5 * 21
    assert len(prompts.anomalous) == 5 * 21


def test_the_empty_set_is_the_templates_filled_with_nothing() -> None:
    # given
    category = _category([], [])

    # when
    prompts = build_prompts(category)

    # then
    assert len(prompts.empty) == 21
    assert prompts.empty[0] == "a cropped photo of the ."


def test_other_braces_in_a_description_survive() -> None:
    # given
    category = _category([], ["{} with a {curly} mark"])

    # when
    prompts = build_prompts(category)

    # then
    assert (
        prompts.anomalous[-1]
        == "a photo of a metal surface with a {curly} mark for anomaly detection."
    )


def test_a_state_without_slot_is_rejected_with_its_path() -> None:
    # given
    data = {"des": {"good": ["ok", "{} fine"], "defect": []}, "map": "metal surface"}

    # when / then
    with pytest.raises(InvalidInputError, match=r"part\.des\.good\[0\]"):
        parse_category("part", data)


def test_unknown_keys_are_rejected() -> None:
    # given
    data = {"des": {"good": [], "defect": []}, "map": "metal", "sample": []}

    # when / then
    with pytest.raises(InvalidInputError, match="part needs keys"):
        parse_category("part", data)


def test_samples_are_kept_in_order(shared_data: Path) -> None:
    # given
    categories = _load(shared_data, "neu_mt_descriptions.json")

    # when
    tile = categories["magnetic_tile"]

    # then
    assert tile.samples[0] == "magnetic-tile/MT_Free/Imgs/exp0_num_743.jpg"
    assert len(tile.samples) == 4
    assert categories["neu_steel_strip"].samples == ()


def test_fingerprint_changes_with_the_prompts_only() -> None:
    # given
    base = _category(["{} fine"], [])
    same_text = CategoryDescription("other", "metal surface", ("{} fine",), (), ("a.png",))
    changed = _category(["{} finer"], [])

    # when / then
    assert base.fingerprint() == same_text.fingerprint()
    assert base.fingerprint() != changed.fingerprint()


def test_overlong_prompts_are_reported_with_token_counts(tokenizer: SimpleTokenizer) -> None:
    # given
    long_state = "{} with defect, it appears as " + "a dark long streak " * 20
    prompts = build_prompts(_category([], [long_state]))

    # when
    overlong = find_overlong_prompts([*prompts.normal, *prompts.anomalous], tokenizer)

    # then
    assert len(overlong) == 20  # 21 templates, one listed twice
    assert all(o.num_tokens > 77 for o in overlong)
    assert all("dark long streak" in o.prompt for o in overlong)
    first = overlong[0]
    assert first.num_tokens == len(tokenizer.encode(first.prompt)) + 2


def test_strict_mode_raises_on_overlong_prompts(tokenizer: SimpleTokenizer) -> None:
    # given
    prompts = ["a photo of " + "the scratch " * 60]

    # when / then
    with pytest.raises(InvalidInputError, match="77-token context") as caught:
        check_prompt_lengths(prompts, tokenizer, strict=True)
    assert caught.value.code == "prompt_too_long"


def test_lenient_mode_returns_the_report(tokenizer: SimpleTokenizer) -> None:
    # given
    prompts = ["a short prompt.", "a photo of " + "the scratch " * 60]

    # when
    report = check_prompt_lengths(prompts, tokenizer, strict=False)

    # then
    assert [o.prompt for o in report] == [prompts[1]]


def test_metal_descriptions_fit_and_the_visa_chewinggum_one_does_not(
    shared_data: Path, tokenizer: SimpleTokenizer
) -> None:
    # given
    metal = _load(shared_data, "metal_datasets_descriptions_with_samples.json")
    visa = _load(shared_data, "visa_descriptions_with_samples.json")

    def overlong(category: CategoryDescription) -> list[int]:
        p = build_prompts(category)
        return [o.num_tokens for o in find_overlong_prompts([*p.normal, *p.anomalous], tokenizer)]

    # when / then
    assert overlong(metal["casting_billet"]) == []
    assert overlong(metal["steel_pipe"]) == []
    assert max(overlong(visa["chewinggum"])) > 90
