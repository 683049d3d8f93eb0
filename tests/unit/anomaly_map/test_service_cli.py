"""``agssp models`` and ``agssp maps`` commands, run in-process with typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agssp import anomaly, models
from tests.unit.anomaly_map.test_service_support import FIXTURES, image_bytes, mask_bytes

runner = CliRunner()


def test_list_shows_weights_present(tmp_path: Path) -> None:
    # given
    folder = tmp_path / "open_clip" / "ViT-B-16-plus-240"
    folder.mkdir(parents=True)
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"0" * 2048)
    # when
    result = runner.invoke(models.app, ["list", "--model-dir", str(tmp_path)])
    # then
    assert result.exit_code == 0
    assert "ViT-B-16-plus-240" in result.output
    assert "open_clip_pytorch_model.bin" in result.output


def test_fetch_offline_fails_clearly_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    # given
    def offline(cfg, staging):
        raise OSError("Name or service not known")

    monkeypatch.setattr(models, "_download", offline)
    # when
    result = runner.invoke(
        models.app, ["fetch-clip", "ViT-B-16-plus-240", "--model-dir", str(tmp_path)]
    )
    # then
    assert result.exit_code == 2
    assert "offline" in result.output
    assert not (tmp_path / "open_clip" / "ViT-B-16-plus-240").exists()


def test_fetch_puts_the_file_where_the_service_looks(tmp_path, monkeypatch) -> None:
    # given
    source = tmp_path / "cache" / "vit_b_16_plus_240-laion400m_e32.pt"
    source.parent.mkdir()
    source.write_bytes(b"weights")
    monkeypatch.setattr(models, "_download", lambda cfg, staging: source)
    # when
    result = runner.invoke(
        models.app, ["fetch-clip", "ViT-B-16-plus-240", "--model-dir", str(tmp_path / "m")]
    )
    # then
    assert result.exit_code == 0, result.output
    target = tmp_path / "m" / "open_clip" / "ViT-B-16-plus-240" / source.name
    assert target.read_bytes() == b"weights"


def test_fetch_unknown_tag_is_a_usage_error(tmp_path) -> None:
    # when
    result = runner.invoke(
        models.app,
        ["fetch-clip", "ViT-B-16-plus-240", "--tag", "nope", "--model-dir", str(tmp_path)],
    )
    # then
    assert result.exit_code == 2
    assert "laion400m_e32" in result.output


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "tiles"
    for folder, box in (("MT_Free", None), ("MT_Crack", (5, 5, 20, 30))):
        imgs = root / folder / "Imgs"
        imgs.mkdir(parents=True)
        for i in range(3):
            (imgs / f"{folder}{i}.jpg").write_bytes(image_bytes(seed=i + len(folder), fmt="JPEG"))
            (imgs / f"{folder}{i}.png").write_bytes(mask_bytes(48, 64, box))
    descriptions = {
        "tiles": {
            "des": {"good": [], "defect": ["{} with a crack"]},
            "map": "tile surface",
            "samples": ["tiles/MT_Free/Imgs/MT_Free0.jpg"],
        }
    }
    (tmp_path / "descriptions.json").write_text(json.dumps(descriptions))
    return root


def test_evaluate_a_local_folder_writes_the_three_metrics(tmp_path, dataset, monkeypatch) -> None:
    # given
    monkeypatch.setenv("AGSSP_HOME", str(tmp_path / "home"))
    anomaly_args = [
        "evaluate",
        str(dataset),
        "--descriptions",
        str(tmp_path / "descriptions.json"),
        "--category",
        "tiles",
        "--model",
        "tiny-vit",
        "--model-config-dir",
        str(FIXTURES),
        "--allow-random-weights",
        "--out",
        str(tmp_path / "results.json"),
    ]
    # when
    result = runner.invoke(anomaly.app, anomaly_args)
    # then
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["counts"]["normal"] == 3
    assert summary["counts"]["anomalous"] == 3
    assert set(summary["metrics"]) == {"image_auroc", "pixel_auroc", "aupro"}


def test_evaluate_without_weights_fails_with_one_clear_line(tmp_path, dataset, monkeypatch) -> None:
    # given
    monkeypatch.setenv("AGSSP_HOME", str(tmp_path / "home"))
    args = [
        "evaluate",
        str(dataset),
        "--descriptions",
        str(tmp_path / "descriptions.json"),
        "--category",
        "tiles",
        "--model",
        "tiny-vit",
        "--model-config-dir",
        str(FIXTURES),
    ]
    # when
    result = runner.invoke(anomaly.app, args)
    # then
    assert result.exit_code == 1
    assert "model_weights_missing" in result.output


def test_import_writes_categories_to_the_configured_store(tmp_path, dataset, monkeypatch) -> None:
    # given
    store_root = tmp_path / "store"
    monkeypatch.setenv("STORAGE_ROOT", str(store_root))
    monkeypatch.setenv("STORAGE_BACKEND", "file")
    anomaly_args = [
        "import",
        str(tmp_path / "descriptions.json"),
        "--data-root",
        str(tmp_path / "data"),
        "--model",
        "tiny-vit",
        "--model-config-dir",
        str(FIXTURES),
    ]
    # when
    result = runner.invoke(anomaly.app, anomaly_args)
    # then
    assert result.exit_code == 0, result.output
    assert "references=1" in result.output
    assert (store_root / "categories" / "tiles" / "LATEST").is_file()


def test_fit_tocoad_then_evaluate_tocoad_against_the_configured_store(
    tmp_path, dataset, monkeypatch
) -> None:
    # given a file store holding the category, and no CLIP weights anywhere
    monkeypatch.setenv("AGSSP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STORAGE_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("STORAGE_BACKEND", "file")
    monkeypatch.setenv("ANOMALY_MAP_CLIP_MODEL", "tiny-vit")
    monkeypatch.setenv("ANOMALY_MAP_EXTRA_MODEL_CONFIG_DIR", str(FIXTURES))
    monkeypatch.setenv("ANOMALY_MAP_DEVICE", "cpu")
    imported = runner.invoke(
        anomaly.app,
        ["import", str(tmp_path / "descriptions.json"), "--data-root", str(tmp_path / "data")],
    )
    assert imported.exit_code == 0, imported.output
    # when
    fitted = runner.invoke(
        anomaly.app,
        ["fit-tocoad", "tiles", "--normal-dir", str(dataset / "MT_Free"), "--preset", "tiny"],
    )
    evaluated = runner.invoke(
        anomaly.app,
        [
            "evaluate",
            str(dataset),
            "--category",
            "tiles",
            "--mode",
            "tocoad",
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    # then the fit trained on the uploaded images only (not on the masks beside them)
    assert fitted.exit_code == 0, fitted.output
    fit = json.loads(fitted.stdout[fitted.stdout.index("{") :])
    assert fit["state"] == "SUCCEEDED"
    assert fit["images"] == 1 + 3  # the category's reference sample + MT_Free/Imgs/*.jpg
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["mode"] == "tocoad"
    assert summary["model"] == fit["model_version"]
    assert summary["tocoad"]["fit_job"] == fit["job"]
    assert set(summary["metrics"]) == {"image_auroc", "pixel_auroc", "aupro"}


def test_evaluate_tocoad_with_descriptions_is_a_usage_error(tmp_path, dataset) -> None:
    # when
    result = runner.invoke(
        anomaly.app,
        [
            "evaluate",
            str(dataset),
            "--category",
            "tiles",
            "--mode",
            "tocoad",
            "--descriptions",
            str(tmp_path / "descriptions.json"),
        ],
    )
    # then
    assert result.exit_code == 2
    assert "fit-tocoad" in result.output
