"""Prometheus metrics of the inference service, labelled by model name and version.

Counters and histograms are updated as requests and batches finish; queue depth and the
resident models are read from the runtime when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from services.inference.runtime.slots import ResidentModel
from services.inference.stores.models import ModelKey
from services.inference.usecases.sinks import SinkStats

BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LABELS = ("model", "version")


class InferenceMetrics:
    """Request, batch and queue metrics on an app's registry (one registry per app)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "agssp_inference_requests_total",
            "Detection requests by model version and outcome (ok or an error code)",
            [*_LABELS, "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "agssp_inference_request_seconds",
            "Detection latency from the image bytes to the answer (decode, queue, model)",
            _LABELS,
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "agssp_inference_queue_wait_seconds",
            "Time a request waited in its batcher before its batch started",
            _LABELS,
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "agssp_inference_batch_seconds",
            "Duration of one batch call (pre-processing, network, NMS)",
            _LABELS,
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "agssp_inference_batch_size",
            "Images per batch call",
            _LABELS,
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )

    def observe_batch(self, key: ModelKey, size: int, seconds: float) -> None:
        """One batch call finished (called from a batcher's worker thread)."""
        self.batch_size.labels(key.name, key.version).observe(size)
        self.batch_seconds.labels(key.name, key.version).observe(seconds)

    def observe_request(self, key: ModelKey, total_s: float, queue_wait_s: float) -> None:
        """One request was answered."""
        self.requests.labels(key.name, key.version, "ok").inc()
        self.latency.labels(key.name, key.version).observe(total_s)
        self.queue_wait.labels(key.name, key.version).observe(queue_wait_s)

    def observe_failure(self, model: str, code: str) -> None:
        """One request failed with a domain error; the version is unknown here."""
        self.requests.labels(model, "", code).inc()


class ResidentModelsCollector:
    """Reads the runtime's resident models at scrape time: queue depth, in flight, rejected."""

    def __init__(self, resident: Callable[[], list[ResidentModel]]) -> None:
        self._resident = resident

    def collect(self) -> Iterator[Metric]:
        labels = [*_LABELS, "slot"]
        depth = GaugeMetricFamily(
            "agssp_inference_queue_depth", "Requests waiting in a model's batcher", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "agssp_inference_in_flight", "Requests in the batch running now", labels=labels
        )
        rejected = CounterMetricFamily(
            "agssp_inference_rejected",
            "Requests refused with 429 because the model's queue was full",
            labels=labels,
        )
        models = self._resident()
        for model in models:
            values = [model.key.name, model.key.version, model.slot]
            depth.add_metric(values, model.stats.queue_depth)
            in_flight.add_metric(values, model.stats.in_flight)
            rejected.add_metric(values, model.stats.items_rejected)
        resident = GaugeMetricFamily("agssp_inference_resident_models", "Models in memory")
        resident.add_metric([], len(models))
        yield from (depth, in_flight, rejected, resident)


class SinksCollector:
    """Reads the result sinks' counters at scrape time."""

    def __init__(self, sinks: Callable[[], dict[str, SinkStats]]) -> None:
        self._sinks = sinks

    def collect(self) -> Iterator[Metric]:
        stats = self._sinks()
        counters = {
            "delivered": "Results a sink acknowledged",
            "retries": "Failed delivery attempts that were retried (sink down or slow)",
            "dropped": "Results dropped because a sink's queue was full",
            "failed": "Results a sink refused for good",
        }
        for field, doc in counters.items():
            family = CounterMetricFamily(f"agssp_inference_sink_{field}", doc, labels=["sink"])
            for name, s in stats.items():
                family.add_metric([name], getattr(s, field))
            yield family
        depth = GaugeMetricFamily(
            "agssp_inference_sink_queue_depth", "Results waiting for a sink", labels=["sink"]
        )
        for name, s in stats.items():
            depth.add_metric([name], s.queue_depth)
        yield depth


def install_metrics(
    registry: CollectorRegistry,
    resident: Callable[[], list[ResidentModel]],
    sinks: Callable[[], dict[str, SinkStats]] = dict,
) -> InferenceMetrics:
    """Create the service's metrics on ``registry`` and register the scrape-time collectors."""
    metrics = InferenceMetrics(registry)
    registry.register(ResidentModelsCollector(resident))  # type: ignore[arg-type]
    registry.register(SinksCollector(sinks))  # type: ignore[arg-type]
    return metrics
