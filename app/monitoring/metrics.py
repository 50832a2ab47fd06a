"""Prometheus metrics of one API process, served at /metrics.

Each app owns its registry (tests build many apps). Request counts and latencies are labelled by
route template (never the raw path, whose ids would explode the series); /predict adds the model
that answered. Job counts are read from the database when scraped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("tuneserve.metrics")

# Seconds: from a cached single-sentence prediction (a few ms) to a cold model load.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUEUE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1)


class Metrics:
    """The metrics of one API process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "tuneserve_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "tuneserve_http_request_duration_seconds",
            "Time from request to the end of the response, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predict_requests = Counter(
            "tuneserve_predict_requests",
            "Prediction requests by task, answering model, its runtime and outcome (ok, "
            "client_error, error).",
            ["task", "model", "runtime", "outcome"],
            registry=r,
        )
        self.predict_inputs = Counter(
            "tuneserve_predict_inputs",
            "Inputs predicted (a request may carry many), by task and model.",
            ["task", "model"],
            registry=r,
        )
        self.predict_latency = Histogram(
            "tuneserve_predict_duration_seconds",
            "Prediction time once the model is resolved (load, queue and model time), by model "
            "and runtime.",
            ["task", "model", "runtime"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tuneserve_batch_size",
            "Inputs per model call, by base model.",
            ["base_model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "tuneserve_batch_queue_wait_seconds",
            "Time an input waited to join a model call, by base model.",
            ["base_model"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.cache_events = Counter(
            "tuneserve_model_cache_events",
            "Model cache lookups and changes: hit, load, load_failure, eviction.",
            ["event"],
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "tuneserve_model_load_duration_seconds",
            "Time to load a model for serving.",
            buckets=(0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )

    def watch(self, collector: Collector) -> None:
        """Add a collector read at each scrape (loaded models, job counts)."""
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LoadedModelsCollector(Collector):
    """Models held by the predictor cache and the bytes of their weights, read at scrape."""

    def __init__(self, sizes: Callable[[], dict[str, int]]) -> None:
        self._sizes = sizes

    def collect(self) -> Iterator[Metric]:
        sizes = self._sizes()
        count = GaugeMetricFamily("tuneserve_loaded_models", "Models loaded for serving.")
        count.add_metric([], sum(not name.startswith("base:") for name in sizes))
        total = GaugeMetricFamily(
            "tuneserve_loaded_model_bytes",
            "Bytes of weights held by loaded models, by model (shared base weights counted once, "
            "under the base).",
            labels=["model"],
        )
        for model, size in sorted(sizes.items()):
            total.add_metric([model], size)
        yield count
        yield total


class JobsCollector(Collector):
    """Jobs by status, counted in the database at each scrape (all tenants: operator view)."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy import func, select

        from app.db.models import Job, JobStatus

        up = GaugeMetricFamily(
            "tuneserve_database_up", "1 when the last scrape could count jobs in the database."
        )
        try:
            with self._factory() as session:
                rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
                counts = {str(status): int(n) for status, n in rows}
        except Exception as exc:  # a scrape must answer while the database is down
            log.warning("metrics: cannot count jobs: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        jobs = GaugeMetricFamily("tuneserve_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([str(status)], counts.get(str(status), 0))
        yield up
        yield jobs


def route_template(scope: Scope) -> str:
    """The matched route's path template with its router prefixes ("/v1/models/{model_id}")."""
    # FastAPI >= 0.16x keeps included routers whole: the matched route's own path lacks their
    # prefixes, and the full template is on the effective route context it records.
    context: Any = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(context, "path", None) or getattr(scope.get("route"), "path", None)
    return str(path) if path else "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = route_template(scope)
            method = scope.get("method", "")
            self.metrics.http_requests.labels(method, template, str(status)).inc()
            self.metrics.http_latency.labels(method, template).observe(
                time.perf_counter() - started
            )
