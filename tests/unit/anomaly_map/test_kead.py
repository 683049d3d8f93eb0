"""KeadModel on the tiny CLIP: text features, memory bank, scoring and their invariants."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from services.anomaly_map.ml.clip.backbone import ClipBundle
from services.anomaly_map.ml.clip.outputs import MemoryBank
from services.anomaly_map.ml.clip.prompts import CategoryDescription
from services.anomaly_map.ml.clip.scoring import anomaly_probability, few_shot_distance
from services.anomaly_map.ml.kead.scorer import KeadConfig, KeadModel
from shared.errors import InvalidInputError

DESCRIPTION = CategoryDescription(
    name="casting_billet",
    object_phrase="metal surface",
    good=("{} without any damage", "{} without any cracks"),
    defect=("{} with scratch defect, it appears as bright streaks",),
)


@pytest.fixture(scope="module")
def text(tiny_bundle: ClipBundle) -> Tensor:
    return KeadModel(tiny_bundle).text_features(DESCRIPTION)


def _refs(tiny_bundle: ClipBundle, count: int) -> Tensor:
    generator = torch.Generator().manual_seed(7)
    size = tiny_bundle.image_size
    return torch.randn(count, 3, size, size, generator=generator)


def test_config_rejects_unknown_keys() -> None:
    # given / when / then
    with pytest.raises(ValidationError):
        KeadConfig(temprature=0.1)  # type: ignore[call-arg]


def test_config_rejects_unordered_feature_layers() -> None:
    # given / when / then
    with pytest.raises(ValidationError):
        KeadConfig(feature_layers=(3, 1))


def test_feature_layers_beyond_the_model_are_rejected(tiny_bundle: ClipBundle) -> None:
    # given
    config = KeadConfig(feature_layers=(2, 8))

    # when / then
    with pytest.raises(InvalidInputError, match="exceed the 4 blocks"):
        KeadModel(tiny_bundle, config)


def test_defaults_derive_layers_and_vv_start_from_the_model(tiny_bundle: ClipBundle) -> None:
    # given / when
    model = KeadModel(tiny_bundle)

    # then
    assert model.feature_layers == (1, 2, 3, 4)
    assert model.vv_start == 2


def test_text_features_are_two_unit_columns(text: Tensor) -> None:
    # given / when / then
    assert text.shape == (32, 2)
    torch.testing.assert_close(text.norm(dim=0), torch.ones(2))


def test_text_features_are_a_pure_function_of_model_and_description(
    tiny_bundle: ClipBundle, text: Tensor
) -> None:
    # given
    model = KeadModel(tiny_bundle)

    # when
    again = model.text_features(DESCRIPTION)

    # then
    torch.testing.assert_close(again, text, rtol=0, atol=0)


def test_empty_template_subtraction_changes_the_features(
    tiny_bundle: ClipBundle, text: Tensor
) -> None:
    # given
    model = KeadModel(tiny_bundle, KeadConfig(subtract_empty_template=False))

    # when
    plain = model.text_features(DESCRIPTION)

    # then
    assert not torch.allclose(plain, text, atol=1e-3)


def test_overlong_description_is_rejected_by_default(tiny_bundle: ClipBundle) -> None:
    # given
    long = CategoryDescription("x", "metal", (), ("{} with " + "a long dark streak " * 20,))

    # when / then
    with pytest.raises(InvalidInputError, match="prompt"):
        KeadModel(tiny_bundle).text_features(long)
    assert len(KeadModel(tiny_bundle).check_prompts(long)) == 20


def test_zero_shot_output_shapes_and_range(
    tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor
) -> None:
    # given
    model = KeadModel(tiny_bundle)

    # when
    out = model.score(tiny_images, text)

    # then
    assert out.anomaly_map.shape == (3, 5, 5)
    assert out.image_score.shape == (3,)
    assert out.few_shot_map is None
    assert torch.equal(out.anomaly_map, out.zero_shot_map)
    assert torch.equal(out.image_score, out.zero_shot_image_score)
    assert bool(((out.anomaly_map > 0) & (out.anomaly_map < 1)).all())


def test_zero_shot_map_is_the_mean_of_per_level_probabilities(
    tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor
) -> None:
    # given
    model = KeadModel(tiny_bundle)
    encoded = model.encode(tiny_images)

    # when
    out = model.score(tiny_images, text)

    # then
    cosines = [torch.nn.functional.normalize(z, dim=-1) @ text for z in encoded.levels]
    per_level = [(c / 0.07).softmax(dim=-1)[..., 1] for c in cosines]
    expected = torch.stack(per_level).mean(dim=0).view(3, 5, 5)
    torch.testing.assert_close(out.zero_shot_map, expected)


def test_few_shot_fusion_and_image_score_follow_the_code(
    tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor
) -> None:
    # given
    model = KeadModel(tiny_bundle)
    bank = model.build_memory_bank(_refs(tiny_bundle, 2))

    # when
    out = model.score(tiny_images, text, bank)

    # then
    assert out.few_shot_map is not None
    torch.testing.assert_close(out.anomaly_map, out.zero_shot_map + out.few_shot_map)
    expected = (out.zero_shot_image_score + out.anomaly_map.flatten(1).amax(dim=1)) / 2
    torch.testing.assert_close(out.image_score, expected)


def test_a_reference_image_has_no_few_shot_anomaly(tiny_bundle: ClipBundle, text: Tensor) -> None:
    # given
    model = KeadModel(tiny_bundle)
    refs = _refs(tiny_bundle, 2)
    bank = model.build_memory_bank(refs)

    # when
    out = model.score(refs[:1], text, bank)

    # then
    assert out.few_shot_map is not None
    torch.testing.assert_close(out.few_shot_map, torch.zeros(1, 5, 5), atol=1e-5, rtol=0)


def test_memory_bank_holds_k_times_g_squared_rows_per_level(tiny_bundle: ClipBundle) -> None:
    # given
    model = KeadModel(tiny_bundle, KeadConfig(k_shot=2))

    # when
    bank = model.build_memory_bank(_refs(tiny_bundle, 4))

    # then
    assert bank.num_images == 2
    assert [tuple(level.shape) for level in bank.levels] == [(50, 32)] * 4


def test_k_is_honoured_when_scoring_with_a_larger_bank(
    tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor
) -> None:
    # given
    refs = _refs(tiny_bundle, 4)
    full_bank = KeadModel(tiny_bundle).build_memory_bank(refs)
    small_bank = KeadModel(tiny_bundle).build_memory_bank(refs[:1])
    one_shot = KeadModel(tiny_bundle, KeadConfig(k_shot=1))

    # when
    from_full = one_shot.score(tiny_images, text, full_bank)
    from_small = one_shot.score(tiny_images, text, small_bank)
    with_all = KeadModel(tiny_bundle).score(tiny_images, text, full_bank)

    # then
    assert from_full.few_shot_map is not None
    assert with_all.few_shot_map is not None
    torch.testing.assert_close(from_full.few_shot_map, from_small.few_shot_map)
    assert bool((with_all.few_shot_map <= from_full.few_shot_map + 1e-6).all())
    assert not torch.allclose(with_all.few_shot_map, from_full.few_shot_map)


def test_k_zero_is_zero_shot_even_with_a_bank(
    tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor
) -> None:
    # given
    bank = KeadModel(tiny_bundle).build_memory_bank(_refs(tiny_bundle, 1))
    model = KeadModel(tiny_bundle, KeadConfig(k_shot=0))

    # when
    out = model.score(tiny_images, text, bank)

    # then
    assert out.few_shot_map is None
    with pytest.raises(InvalidInputError, match="zero-shot"):
        model.build_memory_bank(_refs(tiny_bundle, 1))


def test_memory_bank_round_trips_through_a_tensor_dict(
    tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor
) -> None:
    # given
    model = KeadModel(tiny_bundle)
    bank = model.build_memory_bank(_refs(tiny_bundle, 2))

    # when
    state = bank.to_state_dict()
    restored = MemoryBank.from_state_dict(state)

    # then
    assert sorted(state) == [
        "kead.level.0",
        "kead.level.1",
        "kead.level.2",
        "kead.level.3",
        "num_images",
    ]
    assert all(isinstance(v, Tensor) for v in state.values())
    torch.testing.assert_close(
        model.score(tiny_images, text, restored).anomaly_map,
        model.score(tiny_images, text, bank).anomaly_map,
        rtol=0,
        atol=0,
    )


def test_malformed_bank_state_is_rejected() -> None:
    # given
    state = {"kead.level.0": torch.zeros(2, 3), "kead.level.2": torch.zeros(2, 3)}
    state["num_images"] = torch.tensor(1)

    # when / then
    with pytest.raises(InvalidInputError, match="inconsistent"):
        MemoryBank.from_state_dict(state)


def test_a_bank_of_another_method_is_refused(
    tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor
) -> None:
    # given
    bank = MemoryBank(method="winclip", levels=(torch.zeros(25, 32),) * 4, num_images=1)

    # when / then
    with pytest.raises(InvalidInputError, match="rebuild"):
        KeadModel(tiny_bundle).score(tiny_images, text, bank)


def test_wrong_image_size_is_rejected(tiny_bundle: ClipBundle, text: Tensor) -> None:
    # given
    images = torch.zeros(1, 3, 32, 32)

    # when / then
    with pytest.raises(InvalidInputError, match="40"):
        KeadModel(tiny_bundle).score(images, text)


def test_official_levels_reproduce_first_plus_three_times_last(
    tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor
) -> None:
    """agssp-spec §6.2: the official in-place V-V update makes M0 = (p_first + 3 p_last) / 4.

    The tiny model has 4 blocks, levels (1, 2, 3, 4): the ViT-B analogue of (p3 + 3 p12) / 4.
    """
    # given per-level probabilities of the distinct-level stream
    distinct = KeadModel(tiny_bundle, KeadConfig(level_mode="distinct"))
    official = KeadModel(tiny_bundle)  # the default follows the official code
    encoded = distinct.encode(tiny_images)
    g = tiny_bundle.grid_size
    probs = [anomaly_probability(level, text, 0.07).view(-1, g, g) for level in encoded.levels]
    # when
    out = official.score(tiny_images, text)
    # then
    assert official.config.level_mode == "official"
    assert official.feature_layers == (1, 2, 3, 4)
    expected = (probs[0] + 3 * probs[-1]) / 4
    torch.testing.assert_close(out.zero_shot_map, expected, rtol=1e-5, atol=1e-6)
    distinct_out = distinct.score(tiny_images, text)
    assert not torch.allclose(distinct_out.zero_shot_map, out.zero_shot_map, atol=1e-6)


def test_official_bank_levels_alias_the_final_stream(
    tiny_bundle: ClipBundle, tiny_images: Tensor
) -> None:
    # when
    bank = KeadModel(tiny_bundle).build_memory_bank(tiny_images)
    # then levels 2..4 are one and the same stream, level 1 is the plain stream
    torch.testing.assert_close(bank.levels[1], bank.levels[3])
    torch.testing.assert_close(bank.levels[2], bank.levels[3])
    assert not torch.allclose(bank.levels[0], bank.levels[3])


@pytest.mark.parametrize("source", ["built", "stored", "distinct"])
def test_few_shot_map_is_the_mean_of_per_level_distances(
    tiny_bundle: ClipBundle, tiny_images: Tensor, text: Tensor, source: str
) -> None:
    """Official levels share one stream; the map must still equal a level-by-level
    computation, whether bank levels are one tensor (built), equal copies (stored) or
    different (a distinct-mode bank)."""
    # given
    model = KeadModel(tiny_bundle)
    refs = _refs(tiny_bundle, 2)
    if source == "distinct":
        bank = KeadModel(tiny_bundle, KeadConfig(level_mode="distinct")).build_memory_bank(refs)
    else:
        bank = model.build_memory_bank(refs)
    if source == "stored":
        bank = MemoryBank.from_state_dict(
            {key: value.clone() for key, value in bank.to_state_dict().items()}
        )
    levels = model.encode(tiny_images).levels
    per_level = [
        few_shot_distance(level.flatten(0, 1), memory).view(3, 5, 5)
        for level, memory in zip(levels, bank.levels, strict=True)
    ]
    # when
    out = model.score(tiny_images, text, bank)
    # then
    assert out.few_shot_map is not None
    torch.testing.assert_close(out.few_shot_map, torch.stack(per_level).mean(dim=0))


def test_default_resampler_is_pil_bicubic_as_the_official_code(tiny_bundle: ClipBundle) -> None:
    # given an image that is not square
    import numpy as np
    from PIL import Image

    image = np.random.default_rng(3).integers(0, 256, (37, 71, 3), dtype=np.uint8)
    s = tiny_bundle.image_size
    # when
    pil = KeadModel(tiny_bundle).preprocess([image])
    tv = KeadModel(tiny_bundle, KeadConfig(resampler="torchvision")).preprocess([image])
    # then the default equals PIL's bicubic resize followed by the CLIP normalisation
    reference = np.asarray(Image.fromarray(image).resize((s, s), Image.Resampling.BICUBIC))
    mean = torch.tensor(tiny_bundle.mean).view(3, 1, 1)
    std = torch.tensor(tiny_bundle.std).view(3, 1, 1)
    expected = (torch.from_numpy(reference.copy()).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(pil[0].cpu(), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(pil, tv)
