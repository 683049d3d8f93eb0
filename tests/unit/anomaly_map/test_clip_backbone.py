"""Loading CLIP from local weights only; geometry from architecture configs alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.anomaly_map.ml.clip.backbone import (
    ClipBundle,
    ModelWeightsMissingError,
    default_quick_gelu,
    find_weights,
    grid_size_for,
    load_clip,
    weights_folder,
)
from shared.errors import InvalidInputError, NotFoundError, UnavailableError


@pytest.mark.parametrize(
    ("model_name", "grid"),
    [("ViT-B-16-plus-240", 15), ("ViT-L-14-336", 24), ("ViT-H-14-378-quickgelu", 27)],
)
def test_grid_size_comes_from_the_architecture_config(model_name: str, grid: int) -> None:
    # given / when
    result = grid_size_for(model_name)

    # then
    assert result == grid


def test_grid_size_follows_a_forced_image_size() -> None:
    # given / when
    result = grid_size_for("ViT-B-16-plus-240", image_size=480)

    # then
    assert result == 30


def test_unknown_architecture_is_not_found() -> None:
    # given / when / then
    with pytest.raises(NotFoundError, match="no-such-vit"):
        grid_size_for("no-such-vit")


def test_missing_weights_error_names_model_folder_and_fetch_command(tmp_path: Path) -> None:
    # given
    folder = tmp_path / "open_clip" / "ViT-B-16-plus-240"

    # when
    with pytest.raises(ModelWeightsMissingError) as caught:
        load_clip("ViT-B-16-plus-240", model_dir=tmp_path, device="cpu")

    # then
    message = str(caught.value)
    assert "'ViT-B-16-plus-240'" in message
    assert str(folder) in message
    assert "agssp models fetch-clip ViT-B-16-plus-240" in message
    assert isinstance(caught.value, UnavailableError)
    assert caught.value.code == "model_weights_missing"


def test_missing_explicit_checkpoint_is_reported(tmp_path: Path) -> None:
    # given
    checkpoint = tmp_path / "absent.bin"

    # when / then
    with pytest.raises(ModelWeightsMissingError, match=r"absent\.bin"):
        load_clip("ViT-B-16-plus-240", checkpoint=checkpoint, model_dir=tmp_path, device="cpu")


def test_random_weights_only_when_allowed(tiny_model_name: str, tmp_path: Path) -> None:
    # given / when
    bundle = load_clip(tiny_model_name, model_dir=tmp_path, device="cpu", allow_random_weights=True)

    # then
    assert bundle.weights is None
    assert (bundle.grid_size, bundle.patch_size, bundle.image_size) == (5, 8, 40)
    assert (bundle.num_layers, bundle.embed_dim, bundle.context_length) == (4, 32, 77)


def test_weights_are_read_from_the_model_folder(
    tiny_bundle: ClipBundle, tiny_model_name: str, tmp_path: Path
) -> None:
    # given
    folder = weights_folder(tiny_model_name, tmp_path)
    folder.mkdir(parents=True)
    torch.save(tiny_bundle.model.state_dict(), folder / "open_clip_pytorch_model.bin")

    # when
    torch.manual_seed(123)  # a different random init, overwritten by the file
    loaded = load_clip(tiny_model_name, model_dir=tmp_path, device="cpu")

    # then
    assert loaded.weights == folder / "open_clip_pytorch_model.bin"
    expected = tiny_bundle.model.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)


def test_preferred_weight_file_wins(tmp_path: Path) -> None:
    # given
    folder = weights_folder("ViT-B-16-plus-240", tmp_path)
    folder.mkdir(parents=True)
    for name in ("a.pt", "open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
        (folder / name).write_bytes(b"x")

    # when
    found = find_weights("ViT-B-16-plus-240", tmp_path)

    # then
    assert found == folder / "open_clip_model.safetensors"


def test_a_pt_file_is_accepted(tmp_path: Path) -> None:
    # given
    folder = weights_folder("ViT-L-14-336", tmp_path)
    folder.mkdir(parents=True)
    (folder / "ViT-L-14-336px.pt").write_bytes(b"x")
    (folder / "notes.txt").write_text("not weights")

    # when
    found = find_weights("ViT-L-14-336", tmp_path)

    # then
    assert found == folder / "ViT-L-14-336px.pt"


def test_corrupt_weights_raise_unavailable(tiny_model_name: str, tmp_path: Path) -> None:
    # given
    folder = weights_folder(tiny_model_name, tmp_path)
    folder.mkdir(parents=True)
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"not a checkpoint")

    # when / then
    with pytest.raises(UnavailableError, match="do not load"):
        load_clip(tiny_model_name, model_dir=tmp_path, device="cpu")


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [("ViT-L-14-336", True), ("ViT-B-16-plus-240", False), ("ViT-H-14-378-quickgelu", False)],
)
def test_quick_gelu_is_forced_only_where_the_weights_need_it(
    model_name: str, expected: bool
) -> None:
    # given / when
    result = default_quick_gelu(model_name)

    # then
    assert result is expected


def test_half_precision_needs_cuda(tiny_model_name: str, tmp_path: Path) -> None:
    # given / when / then
    with pytest.raises(InvalidInputError, match="CUDA"):
        load_clip(
            tiny_model_name,
            model_dir=tmp_path,
            device="cpu",
            precision="fp16",
            allow_random_weights=True,
        )
