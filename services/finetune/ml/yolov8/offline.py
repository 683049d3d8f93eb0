"""Keep ultralytics off the network and out of the home directory (field-notes §0.4, §B2).

Call :func:`configure_ultralytics_offline` before the first ``import ultralytics``.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Integrations that ultralytics enables by default when their package is importable; each
# one would log to an outside service.
_DISABLED_SETTINGS = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def configure_ultralytics_offline(config_dir: Path) -> Path:
    """Set ultralytics' environment and settings so that nothing is downloaded or uploaded.

    Sets ``YOLO_OFFLINE=1`` (``is_online()`` is then False, so no update checks or
    telemetry), ``YOLO_AUTOINSTALL=False`` (no pip installs) and ``YOLO_CONFIG_DIR``; turns
    every integration and ``sync`` off in the settings file; points the weights, runs and
    datasets folders inside ``config_dir``; and seeds ``Arial.ttf``/``Arial.Unicode.ttf``
    (copies of matplotlib's DejaVu Sans) so that ``check_font`` never downloads.

    The AMP check (which loads ``yolo26n.pt``) is bypassed per training run in
    ``train.py``; CPU runs never reach it.

    Args:
        config_dir: writable folder for ultralytics' settings, fonts and default folders.

    Returns:
        The folder ultralytics really uses for its settings (``USER_CONFIG_DIR``): a
        subfolder of ``config_dir``, or of the earlier ``YOLO_CONFIG_DIR`` when ultralytics
        had already been imported.

    Raises:
        RuntimeError: ultralytics was imported earlier with auto-install or online mode on;
            its module-level flags can no longer be changed.
    """
    config_dir = Path(config_dir).resolve()
    config_dir.mkdir(parents=True, exist_ok=True)
    already_imported = "ultralytics.utils" in sys.modules
    if not already_imported:
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "False"
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)

    ul_utils = import_ultralytics("ultralytics.utils")
    ul_checks = import_ultralytics("ultralytics.utils.checks")
    if ul_checks.AUTOINSTALL or ul_utils.ONLINE:
        raise RuntimeError(
            "ultralytics was imported before configure_ultralytics_offline() with "
            "YOLO_AUTOINSTALL or online mode on; call it before anything imports ultralytics"
        )
    user_dir = Path(ul_utils.USER_CONFIG_DIR)
    if already_imported and user_dir.parent != config_dir:
        log.warning("ultralytics was imported earlier; it keeps its config dir %s", user_dir)
    ul_utils.SETTINGS.update(
        {
            **_DISABLED_SETTINGS,
            "weights_dir": str(user_dir / "weights"),
            "runs_dir": str(user_dir / "runs"),
            "datasets_dir": str(user_dir / "datasets"),
        }
    )
    _seed_fonts(user_dir)
    return user_dir


def import_ultralytics(module: str) -> Any:
    """Import an ultralytics module, typed ``Any``: its API is largely unannotated."""
    if not module.startswith("ultralytics"):
        raise ValueError(f"not an ultralytics module: {module}")
    return importlib.import_module(module)


def _seed_fonts(user_dir: Path) -> None:
    # check_font() returns a font already in USER_CONFIG_DIR before it tries the network;
    # the glyphs only matter for plots, which our runs switch off anyway.
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in _FONTS:
        target = user_dir / name
        if not target.exists():
            shutil.copyfile(source, target)
            log.debug("seeded %s from %s", target, source)
