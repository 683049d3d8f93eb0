"""Fixtures for the anomaly_map unit tests: a tiny random-init ViT CLIP and its tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.anomaly_map.ml.clip.backbone import ClipBundle, load_clip

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TINY_MODEL = "tiny-vit"  # open_clip registers a config file under its stem


@pytest.fixture(scope="session")
def tiny_model_name() -> str:
    """Registers tests/fixtures/tiny-vit.json with open_clip (4 blocks, width 64, G = 5)."""
    import open_clip

    open_clip.add_model_config(FIXTURES / "tiny-vit.json")
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_name: str, tmp_path_factory: pytest.TempPathFactory) -> ClipBundle:
    """The tiny CLIP with seeded random weights on the CPU."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return load_clip(
        tiny_model_name,
        model_dir=tmp_path_factory.mktemp("models"),
        device="cpu",
        allow_random_weights=True,
    )


@pytest.fixture
def tiny_images(tiny_bundle: ClipBundle) -> torch.Tensor:
    """Three random normalised input images, (3, 3, S, S)."""
    generator = torch.Generator().manual_seed(1)
    size = tiny_bundle.image_size
    return torch.randn(3, 3, size, size, generator=generator)
