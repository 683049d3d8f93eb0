"""A stand-in for the four services' public routes, behind an ``httpx.MockTransport``.

Jobs finish after ``polls`` reads of their record with outputs shaped like the real
services' (dataset map output prefix, pseudo-label prefix, artifacts, finetune metrics), so
the pipeline's hand-offs are checked without servers. Every request is kept for assertions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

URLS = {
    "anomaly_map": "http://maps.test",
    "pretrain": "http://pretrain.test",
    "finetune": "http://finetune.test",
    "inference": "http://inference.test",
}
_HOSTS = {v.removeprefix("http://"): k for k, v in URLS.items()}


@dataclass
class FakeJob:
    id: str
    service: str
    path: str
    body: dict[str, Any]
    polls: int = 0
    state: str = "PENDING"


@dataclass
class FakeSuite:
    """Answers like the services; ``fail`` maps a path to a job error, ``refuse`` to a 422."""

    polls: int = 2
    kead_ready: bool = False
    # a finetune job's mAP@0.5 on val by its init kind: agdp (the AGSSP detector) or scratch
    map50: dict[str, float] = field(default_factory=lambda: {"agdp": 0.42, "scratch": 0.30})
    hide_details: bool = False
    fail: dict[str, str] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    calls: list[tuple[str, str, str, dict[str, Any] | None]] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [b or {} for _, _, p, b in self.calls if p == path]

    def handle(self, request: httpx.Request) -> httpx.Response:
        service = _HOSTS[request.url.host]
        if service in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.calls.append((service, request.method, path, body))
        if path in self.refuse:
            return httpx.Response(422, json={"detail": self.refuse[path], "code": "invalid_config"})
        return self._answer(service, request.method, path, body or {})

    def _answer(self, service: str, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        if path == "/readyz":
            kead = {"ready": self.kead_ready, "reason": None if self.kead_ready else "no weights"}
            methods = {"kead": kead, "tocoad": {"ready": True}}
            if self.hide_details:
                return httpx.Response(503, json={"ready": False, "missing": {"clip": "not ready"}})
            return httpx.Response(503, json={"ready": False, "details": {"methods": methods}})
        if method == "PUT" and path.startswith("/v1/categories/"):
            return httpx.Response(201, json={"name": path.rsplit("/", 1)[1], "version": "c1"})
        if path.endswith("/promote"):
            parts = path.split("/")
            return httpx.Response(200, json={"name": parts[3], "version": parts[5], **body})
        if path.startswith("/v1/jobs/"):
            return self._job_route(method, path)
        job = FakeJob(f"job{len(self.jobs) + 1:03d}", service, path, body)
        self.jobs[job.id] = job
        return httpx.Response(202, json=self._record(job))

    def _job_route(self, method: str, path: str) -> httpx.Response:
        job_id = path.split("/")[3]
        job = self.jobs.get(job_id)
        if job is None:
            return httpx.Response(404, json={"detail": "no such job", "code": "job_not_found"})
        if path.endswith("/cancel"):
            self.canceled.append(job_id)
            job.state = "CANCELED"
            return httpx.Response(200, json=self._record(job))
        job.polls += 1
        if job.state not in ("CANCELED",):
            job.state = "RUNNING" if job.polls < self.polls else self._end(job)
        return httpx.Response(200, json=self._record(job))

    def _end(self, job: FakeJob) -> str:
        return "FAILED" if job.path in self.fail else "SUCCEEDED"

    def _record(self, job: FakeJob) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": job.id,
            "state": job.state,
            "progress": 100.0 if job.state == "SUCCEEDED" else 50.0 * min(job.polls, 1),
            "message": f"{job.path} at poll {job.polls}",
            "artifacts": [],
            "outputs": {},
            "error": self.fail.get(job.path) if job.state == "FAILED" else None,
            "error_code": "train_failed" if job.state == "FAILED" else None,
        }
        if job.state == "SUCCEEDED":
            record.update(_results(job))
            if job.path == "/v1/finetune-jobs":  # this suite's scores, by init kind
                record["outputs"]["metrics"]["map50"] = self.map50[job.body["init"]["kind"]]
        return record


def _results(job: FakeJob) -> dict[str, Any]:
    body, jid = job.body, job.id
    if job.path == "/v1/anomaly-map-jobs":
        return {"outputs": {"output_prefix": f"maps/{body['category']}/{jid}/", "total": 3}}
    if job.path == "/v1/pseudo-label-jobs":
        return {"outputs": {"out_prefix": f"pseudo/{jid}/", "examples": [], "boxes": 5}}
    if job.path == "/v1/pretrain-jobs":
        return {"artifacts": [f"agbp-{body['config']['backbone']}:{jid}"]}
    if job.path == "/v1/agdp-jobs":
        return {"artifacts": [f"agdp-yolov8{body['scale']}:{jid}"]}
    if job.path == "/v1/datasets":
        outputs = {"dataset": f"{body['name']}:{jid}", "classes": ["a", "b"], "images": 10}
        return {"outputs": {**outputs, "boxes": 12, "splits": {"train": 8, "val": 2}}}
    if job.path == "/v1/finetune-jobs":
        scratch = body["init"]["kind"] == "scratch"
        score = 0.30 if scratch else 0.42
        per_class = {
            "a": {"map50": score, "map50_95": score / 2, "num_gt": 3},
            "b": {"map50": score + 0.1, "map50_95": score / 3, "num_gt": 2},
        }
        metrics = {"map50": score, "map50_95": score / 2, "per_class": per_class}
        history = [{"epoch": float(e), "map50": score * e / 3} for e in (1, 2, 3)]
        artifact = f"{body['model_name']}:{jid}"
        return {"outputs": {"artifact": artifact, "metrics": metrics, "history": history}}
    return {}
