"""AGDP jobs (agssp-spec §5.2): a one-class detector trained on pseudo boxes, backbone frozen.

Submission checks the config, that labels and images exist and that the AGBP backbone fits
the scale, pinning it; the run pairs the images with the pseudo labels
(``stores.pseudo_labels``), trains and publishes ``<output name>:<job id>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from services.finetune.config import FinetuneSettings
from services.finetune.ml.backend import Backends
from services.finetune.ml.dataset import DetectionDataset
from services.finetune.ml.image_files import content_hash
from services.finetune.ml.materialize import materialize_yolo
from services.finetune.ml.splits import split_train_val
from services.finetune.params import AgdpJobParams, InitParams, check_train_config, frozen_layers
from services.finetune.stores.models import ModelRegistry
from services.finetune.stores.pseudo_labels import load_pseudo_labels
from services.finetune.usecases.common import (
    backbone_ref,
    finish,
    fitted_epochs,
    lineage,
    publish_detector,
    published,
    submit,
    train_config,
    train_once,
    train_request,
    workspace,
)
from shared.errors import InvalidInputError
from shared.imaging.intake import image_limits
from shared.jobs.context import JobContext
from shared.jobs.producer import TaskSender
from shared.jobs.store import JobStore
from shared.schemas.artifacts import ArtifactRef
from shared.schemas.detector import AgdpConfig
from shared.schemas.detector_families import DEFAULT_FAMILY, check_backbone
from shared.schemas.jobs import JobRecord, TaskName

AGDP_KIND: Final = "agdp"


def submit_agdp(sender: TaskSender, jobs: JobStore, params: AgdpJobParams) -> JobRecord:
    """Queue an AGDP job after checking config, labels, images and the AGBP backbone.

    Raises:
        InvalidInputError: bad config, no labels or images, an unusable backbone artifact.
        NotFoundError: the backbone artifact does not exist.
    """
    config = check_train_config(AGDP_KIND, params.scale, params.config)
    for prefix, what in ((params.labels_prefix, "labels"), (params.images_prefix, "images")):
        if not jobs.store.list(prefix):
            raise InvalidInputError(f"no {what} under {prefix!r}", code=f"{what}_missing")
    backbone = None
    if params.backbone_artifact is not None:
        family = str(config.get("family") or DEFAULT_FAMILY)
        ref = backbone_ref(
            ModelRegistry(jobs.store), params.backbone_artifact, params.scale, family,
            check_backbone(family, config.get("backbone")),
        )  # fmt: skip
        backbone = str(ref)
    stored = params.model_copy(
        update={
            "config": config,
            "backbone_artifact": backbone,
            "artifact_name": params.output_name(),
        }
    )
    return submit(sender, jobs, AGDP_KIND, TaskName.FINETUNE_AGDP, stored.model_dump(mode="json"))


def run_agdp_job(ctx: JobContext, settings: FinetuneSettings, backends: Backends) -> list[str]:
    """Pair images with pseudo labels, split, train, publish ``<output name>:<job id>``."""
    params = AgdpJobParams.model_validate(ctx.params)
    extra = {} if params.frozen is None else {"freeze": frozen_layers(params.frozen)}
    config = train_config(AgdpConfig, {**params.config, **extra}, params.scale, settings)
    ref = ArtifactRef(name=params.output_name(), version=ctx.job_id)
    if published(ctx, ref):
        return [str(ref)]
    backend = backends(config.family)
    backend.prepare(settings)
    backbone = params.backbone_artifact
    start = InitParams(kind="agbp", artifact=backbone) if backbone else InitParams()
    with workspace(settings, ctx.job_id) as work:
        ctx.progress(1, "downloading images and pseudo labels", force=True)
        data = load_pseudo_labels(
            ctx.store,
            params.images_prefix,
            params.labels_prefix,
            work / "data",
            image_limits(settings),
            settings.download_threads,
        )
        hashes = _hashes(data.dataset, data.images_dir)
        train, val = split_train_val(data.dataset, params.val_fraction, config.seed, hashes)
        folder = materialize_yolo(train, val, data.images_dir, work / "yolo")
        ctx.set_outputs(pseudo_labels=data.source, train_images=len(train.images))
        config = fitted_epochs(ctx, config, folder.num_train)
        ctx.check_cancel()
        run = train_once(ctx, backend, train_request(ctx, start, folder, work, config, settings))
        packaged = backend.package(run, val, data.images_dir, work / "export", settings, config)
        made_of = lineage(ctx, AGDP_KIND, start, pseudo_labels=data.source)
        publish_detector(ctx.store, ref, packaged, AGDP_KIND, config, made_of)
    finish(ctx, ref, packaged, run)
    return [str(ref)]


def _hashes(dataset: DetectionDataset, images_dir: Path) -> dict[str, str]:
    """Content hashes, so byte-identical images stay on one side of the split."""
    return {
        im.file_name: content_hash((images_dir / im.file_name).read_bytes())
        for im in dataset.images
    }
