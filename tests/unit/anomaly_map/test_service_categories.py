"""Categories as versioned resources: put, versions, references, prompt checks, import, delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.anomaly_map.ml.clip.prompts import Tokenizer
from services.anomaly_map.stores.categories import CategoryStore
from services.anomaly_map.usecases.categories import (
    import_descriptions,
    prompt_tokenizer,
    put_category,
)
from shared.errors import InvalidInputError, NotFoundError
from shared.imaging.intake import ImageLimits
from shared.storage.filesystem import FileObjectStore
from tests.unit.anomaly_map.test_service_support import image_bytes, make_settings, small_spec

LIMITS = ImageLimits()
LONG_DEFECT = "{} with a scratch defect, it appears as " + "a very long and thin bright line " * 12


@pytest.fixture
def categories(tmp_path: Path) -> CategoryStore:
    return CategoryStore(FileObjectStore(tmp_path / "store"))


@pytest.fixture
def tokenizer(tmp_path: Path) -> Tokenizer:
    return prompt_tokenizer(make_settings(tmp_path))


def _put(categories: CategoryStore, tokenizer: Tokenizer, name: str = "tile", **spec: object):
    return put_category(
        categories, name, small_spec(**spec), tokenizer=tokenizer, limits=LIMITS, max_references=4
    )


def test_put_category_writes_record_and_latest_pointer(categories, tokenizer) -> None:
    # given / when
    record = _put(categories, tokenizer)
    # then
    assert categories.store.exists(f"categories/tile/{record.version}/category.json")
    assert categories.latest_version("tile") == record.version
    assert categories.get("tile").fingerprint == record.fingerprint


def test_each_put_creates_a_new_version_and_latest_follows(categories, tokenizer) -> None:
    # given
    first = _put(categories, tokenizer)
    # when
    second = _put(categories, tokenizer, map="steel surface")
    # then
    assert first.version != second.version
    assert sorted(categories.versions("tile")) == sorted([first.version, second.version])
    assert categories.get("tile").map == "steel surface"
    assert categories.get("tile", first.version).map == "metal surface"


def test_reference_keys_are_copied_into_the_version(categories, tokenizer) -> None:
    # given
    categories.store.put_bytes("uploads/ref.png", image_bytes())
    # when
    record = _put(categories, tokenizer, references=["uploads/ref.png"])
    # then
    assert record.references == [f"categories/tile/{record.version}/refs/00.png"]
    assert categories.store.get_bytes(record.references[0]) == image_bytes()
    assert record.sources == ["uploads/ref.png"]


def test_unknown_reference_key_is_refused(categories, tokenizer) -> None:
    # when / then
    with pytest.raises(InvalidInputError) as info:
        _put(categories, tokenizer, references=["uploads/missing.png"])
    assert info.value.code == "reference_not_found"


def test_corrupt_reference_upload_is_refused_before_anything_is_written(
    categories, tokenizer
) -> None:
    # when
    with pytest.raises(InvalidInputError):
        put_category(
            categories,
            "tile",
            small_spec(),
            [("bad.png", b"\x89PNG\r\n\x1a\nbroken")],
            tokenizer=tokenizer,
            limits=LIMITS,
            max_references=4,
        )
    # then
    assert categories.names() == []


def test_too_many_references_are_refused(categories, tokenizer) -> None:
    # given
    uploads = [(f"{i}.png", image_bytes(seed=i)) for i in range(5)]
    # when / then
    with pytest.raises(InvalidInputError) as info:
        put_category(
            categories,
            "tile",
            small_spec(),
            uploads,
            tokenizer=tokenizer,
            limits=LIMITS,
            max_references=4,
        )
    assert info.value.code == "too_many_references"


def test_overlong_description_is_refused_naming_the_string(categories, tokenizer) -> None:
    # when
    with pytest.raises(InvalidInputError) as info:
        _put(categories, tokenizer, defect=["{} with a dent", LONG_DEFECT])
    # then
    assert info.value.code == "prompt_too_long"
    assert "tile.defect[1]" in info.value.message
    assert "defect[0]" not in info.value.message


def test_state_without_slot_is_refused(categories, tokenizer) -> None:
    # when / then
    with pytest.raises(InvalidInputError, match="exactly one"):
        _put(categories, tokenizer, good=["no slot here"])


@pytest.mark.parametrize("name", ["", "../x", "a/b", "LATEST", "-x", "x" * 65])
def test_invalid_category_names_are_refused(categories, tokenizer, name: str) -> None:
    # when / then
    with pytest.raises(InvalidInputError):
        _put(categories, tokenizer, name=name)


def test_delete_removes_every_version(categories, tokenizer) -> None:
    # given
    _put(categories, tokenizer)
    _put(categories, tokenizer)
    # when
    categories.delete("tile")
    # then
    assert categories.store.list("categories/tile/") == []
    with pytest.raises(NotFoundError) as info:
        categories.get("tile")
    assert info.value.code == "category_not_found"


def test_unknown_version_is_not_found(categories, tokenizer) -> None:
    # given
    _put(categories, tokenizer)
    # when / then
    with pytest.raises(NotFoundError):
        categories.get("tile", "20990101T000000Z-deadbeef")


def _description_file(samples: list[str]) -> dict[str, object]:
    return {
        "plate": {
            "des": {"good": ["{} without rust"], "defect": ["{} with a hole defect"]},
            "map": "steel plate surface",
            "samples": samples,
        },
        "pipe": {"des": {"good": [], "defect": []}, "map": "pipe surface", "samples": []},
    }


def test_import_reads_relative_samples_under_the_data_root(tmp_path, categories, tokenizer) -> None:
    # given
    root = tmp_path / "data"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "ok.png").write_bytes(image_bytes())
    samples = ["refs/ok.png", "/abs/elsewhere.jpg", "../outside.png", "refs/missing.png"]
    # when
    result = import_descriptions(
        categories, _description_file(samples), tokenizer=tokenizer, limits=LIMITS, data_root=root
    )
    # then
    plate = next(r for r in result.created if r.name == "plate")
    assert len(plate.references) == 1
    assert plate.sources == ["refs/ok.png"]
    assert len(result.warnings) == 3
    assert categories.names() == ["pipe", "plate"]


def test_import_without_data_root_ignores_samples_with_a_warning(categories, tokenizer) -> None:
    # when
    result = import_descriptions(
        categories,
        _description_file(["refs/ok.png"]),
        tokenizer=tokenizer,
        limits=LIMITS,
        data_root=None,
    )
    # then
    assert all(not r.references for r in result.created)
    assert "ANOMALY_MAP_DATA_ROOT" in result.warnings[0]


def test_import_with_an_overlong_prompt_creates_nothing(categories, tokenizer) -> None:
    # given
    data = _description_file([])
    data["pipe"] = {"des": {"good": [], "defect": [LONG_DEFECT]}, "map": "pipe", "samples": []}
    # when
    with pytest.raises(InvalidInputError) as info:
        import_descriptions(categories, data, tokenizer=tokenizer, limits=LIMITS, data_root=None)
    # then
    assert info.value.code == "prompt_too_long"
    assert categories.names() == []


def test_import_only_selected_categories(categories, tokenizer) -> None:
    # when
    result = import_descriptions(
        categories,
        _description_file([]),
        tokenizer=tokenizer,
        limits=LIMITS,
        data_root=None,
        only=["pipe"],
    )
    # then
    assert [r.name for r in result.created] == ["pipe"]


def test_import_of_a_malformed_file_is_refused(categories, tokenizer) -> None:
    # when / then
    with pytest.raises(InvalidInputError):
        import_descriptions(
            categories,
            {"x": {"des": {"good": []}, "map": "m"}},
            tokenizer=tokenizer,
            limits=LIMITS,
            data_root=None,
        )


class _CountingTokenizer:
    """Wraps the real tokenizer and records how many characters it was asked to encode."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.context_length = inner.context_length
        self.chars: list[int] = []

    def __call__(self, texts, context_length=None):  # type: ignore[no-untyped-def]
        return self.inner(texts, context_length)

    def encode(self, text: str) -> list[int]:
        self.chars.append(len(text))
        return self.inner.encode(text)


@pytest.mark.parametrize("where", ["defect", "good", "map"])
def test_a_megabyte_prompt_is_refused_before_it_is_tokenised(categories, tokenizer, where) -> None:
    # given a counting tokenizer and a 1 MB description string
    counting = _CountingTokenizer(tokenizer)
    huge = "{} with a " + "very long crack " * 65_536
    spec = {"map": huge} if where == "map" else {where: [huge]}
    # when
    with pytest.raises(InvalidInputError) as info:
        _put(categories, counting, **spec)  # type: ignore[arg-type]
    # then nothing near that size reached the BPE, and the reply stays short
    assert info.value.code == "prompt_too_long"
    assert max(counting.chars, default=0) < 20_000
    assert len(info.value.message) < 2_000
    assert f"{where}" in info.value.message


def test_a_prompt_just_over_the_context_is_still_measured_exactly(categories, tokenizer) -> None:
    # given
    counting = _CountingTokenizer(tokenizer)
    # when
    with pytest.raises(InvalidInputError) as info:
        _put(categories, counting, defect=[LONG_DEFECT])
    # then the short-cut did not apply: the prompt was tokenised and its count is exact
    assert counting.chars
    assert "tokens)" in info.value.message
    assert "over" not in info.value.message
