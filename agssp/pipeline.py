"""``agssp pipeline``: run the AGSSP job end to end against a running suite, and follow it.

``run`` uploads local folders first (``agssp store put``), then posts one request to the
pipeline service; everything after that happens in the suite, so the command can be stopped
and the pipeline followed again later with ``agssp pipeline follow ID``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agssp.store import describe_store, plan_upload, upload
from shared.config import get_common_settings
from shared.schemas.detector_families import DEFAULT_FAMILY, FAMILIES

if TYPE_CHECKING:  # httpx loads with the command: worker images run `agssp` without it
    import httpx

app = typer.Typer(help="The AGSSP pipeline: unlabelled images + a few labels -> served detector.")

UrlOption = Annotated[
    str, typer.Option(envvar="AGSSP_PIPELINE_URL", help="pipeline service base URL")
]
KeyOption = Annotated[str, typer.Option(envvar="AGSSP_API_KEY", help="API key (train scope)")]
DEFAULT_URL = "http://127.0.0.1:8006"
_END = {"SUCCEEDED", "FAILED", "CANCELED"}


def _client(url: str, key: str) -> httpx.Client:
    import httpx

    headers = {"X-API-Key": key} if key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60)


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.is_success:
        body: dict[str, Any] = response.json()
        return body
    try:
        detail = response.json()
    except ValueError:
        detail = response.text[:500]
    typer.echo(f"error {response.status_code}: {json.dumps(detail)[:2000]}", err=True)
    raise typer.Exit(2)


def stage_source(source: str, prefix: str) -> str:
    """A store prefix for ``source``: uploaded under ``prefix`` when it is a local folder."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return source if source.endswith("/") else f"{source}/"
    from shared.storage.factory import create_store

    settings = get_common_settings()
    store = create_store(settings)
    transfers = plan_upload(path, prefix, rename=True)
    written = upload(store, transfers, force=False, threads=8)
    typer.echo(
        f"{path}: {written} of {len(transfers)} files uploaded to {prefix} "
        f"({describe_store(settings)})",
        err=True,
    )
    return prefix


def progress_line(record: dict[str, Any]) -> str:
    """One line: pipeline state, the current step with its progress and message."""
    steps = record.get("steps", [])
    done = sum(1 for s in steps if s["state"] in ("SUCCEEDED", "SKIPPED"))
    current = next((s for s in steps if s["state"] not in ("SUCCEEDED", "SKIPPED")), None)
    text = f"{record['state']:9s} {done}/{len(steps)} steps"
    if current is not None:
        text += f"  {current['name']} {current['state']} {current['progress']:.0f}%"
        if current.get("message"):
            text += f"  {current['message']}"
    if record.get("error"):
        text += f"  error: {record['error']}"
    return text


def follow_pipeline(client: httpx.Client, pipeline_id: str, interval_s: float) -> dict[str, Any]:
    """Print a line whenever the pipeline moves; returns the final record."""
    last = ""
    while True:
        record = _check(client.get(f"/v1/pipelines/{pipeline_id}"))
        line = progress_line(record)
        if line != last:
            typer.echo(line)
            last = line
        if record["state"] in _END:
            return record
        time.sleep(interval_s)


def _finish(client: httpx.Client, record: dict[str, Any]) -> None:
    if record["state"] != "SUCCEEDED":
        raise typer.Exit(1)
    done = {s["name"]: s["outputs"] for s in record["steps"] if s["state"] == "SUCCEEDED"}
    for step, label in (("finetune", "detector"), ("baseline", "scratch baseline")):
        if step in done:
            out, metrics = done[step], done[step].get("metrics", {})
            typer.echo(f"{label} {out.get('artifact')}: mAP@0.5 {metrics.get('map50')}")
    if "promote" in done:
        out = done["promote"]
        typer.echo(f"promoted to {out.get('stage')}: {out.get('model')}:{out.get('version')}")
    typer.echo(f"report: {client.base_url}/v1/pipelines/{record['id']}/report")


@app.command("run")
def run(
    name: Annotated[str, typer.Option(help="model name of the detector")],
    category: Annotated[str, typer.Option(help="anomaly-map category")],
    images: Annotated[str, typer.Option(help="unlabelled images: a local folder or a prefix")],
    labelled: Annotated[str, typer.Option(help="labelled set: a local folder or a prefix")],
    label_format: Annotated[
        str, typer.Option("--format", help="auto (recognise the layout), voc, coco, yolo, masks")
    ] = "auto",
    labelled_images: Annotated[
        str | None, typer.Option(help="images folder in the labelled set (default: as found)")
    ] = None,
    annotations: Annotated[str | None, typer.Option(help="annotations in the labelled set")] = None,
    describe: Annotated[
        str | None, typer.Option(help="create the category: the object, e.g. 'steel strip'")
    ] = None,
    maps: Annotated[str, typer.Option(help="auto, kead, tocoad or provided")] = "auto",
    maps_prefix: Annotated[str | None, typer.Option(help="maps for --maps provided")] = None,
    preset: Annotated[str, typer.Option(help="cpu-demo, cpu or gpu-paper")] = "cpu-demo",
    detector: Annotated[
        str, typer.Option(help=f"detector family: {', '.join(FAMILIES)}")
    ] = DEFAULT_FAMILY,
    scale: Annotated[str, typer.Option(help="YOLOv8 scale n, s or m")] = "n",
    seed: int = 0,
    baseline: Annotated[bool, typer.Option(help="also train from scratch")] = True,
    promote: Annotated[str | None, typer.Option(help="staging or production")] = None,
    promote_rule: Annotated[
        str,
        typer.Option(help="better (AGSSP or scratch, the higher val mAP@0.5) or agssp"),
    ] = "better",
    follow: Annotated[bool, typer.Option(help="follow until the pipeline ends")] = True,
    interval: float = 3.0,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = "",
) -> None:
    """Start a pipeline (uploading local folders first) and follow it to the end."""
    body: dict[str, Any] = {
        "name": name,
        "category": category,
        "unlabelled_prefix": stage_source(images, f"uploads/{name}/unlabelled/"),
        "labelled": {
            "prefix": stage_source(labelled, f"uploads/{name}/labelled/"),
            "format": label_format,
            "images": labelled_images,
            "annotations": annotations,
        },
        "maps": maps,
        "maps_prefix": maps_prefix,
        "preset": preset,
        "detector": detector,
        "scale": scale,
        "seed": seed,
        "baseline": baseline,
        "promote": promote,
        "promote_rule": promote_rule,
    }
    if describe:
        body["category_spec"] = {"map": describe}
    with _client(url, api_key) as client:
        record = _check(client.post("/v1/pipelines", json=body))
        typer.echo(f"pipeline {record['id']} started ({url})")
        if follow:
            _finish(client, follow_pipeline(client, record["id"], interval))


@app.command("follow")
def follow_cmd(
    pipeline_id: str, interval: float = 3.0, url: UrlOption = DEFAULT_URL, api_key: KeyOption = ""
) -> None:
    """Follow a pipeline until it ends; exit 1 when it failed or was canceled."""
    with _client(url, api_key) as client:
        _finish(client, follow_pipeline(client, pipeline_id, interval))


@app.command("list")
def list_cmd(url: UrlOption = DEFAULT_URL, api_key: KeyOption = "") -> None:
    """Newest pipelines first."""
    with _client(url, api_key) as client:
        response = client.get("/v1/pipelines")
        if not response.is_success:
            _check(response)
        for item in response.json():
            typer.echo(
                f"{item['id']}  {item['name']:20s} {item['state']:9s} {item['progress']:5.1f}%  "
                f"{item['current_step'] or ''}"
            )


@app.command("show")
def show_cmd(pipeline_id: str, url: UrlOption = DEFAULT_URL, api_key: KeyOption = "") -> None:
    """One pipeline record as JSON."""
    with _client(url, api_key) as client:
        typer.echo(json.dumps(_check(client.get(f"/v1/pipelines/{pipeline_id}")), indent=2))


@app.command("cancel")
def cancel_cmd(pipeline_id: str, url: UrlOption = DEFAULT_URL, api_key: KeyOption = "") -> None:
    """Stop a pipeline (its running job is canceled too)."""
    with _client(url, api_key) as client:
        typer.echo(progress_line(_check(client.post(f"/v1/pipelines/{pipeline_id}/cancel"))))


@app.command("resume")
def resume_cmd(pipeline_id: str, url: UrlOption = DEFAULT_URL, api_key: KeyOption = "") -> None:
    """Run a failed or canceled pipeline again from the step where it stopped."""
    with _client(url, api_key) as client:
        typer.echo(progress_line(_check(client.post(f"/v1/pipelines/{pipeline_id}/resume"))))


@app.command("report")
def report_cmd(
    pipeline_id: str, out: Path, url: UrlOption = DEFAULT_URL, api_key: KeyOption = ""
) -> None:
    """Save a pipeline's HTML report to OUT."""
    with _client(url, api_key) as client:
        response = client.get(f"/v1/pipelines/{pipeline_id}/report")
        if not response.is_success:
            _check(response)
        out.write_bytes(response.content)
        typer.echo(f"report written to {out}")
