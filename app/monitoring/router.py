"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from app.auth.deps import MetricsReader
from app.core.schemas import PROTECTED, error_responses

router = APIRouter(tags=["health"], responses=PROTECTED)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(403)},
)
def prometheus_metrics(request: Request, principal: MetricsReader) -> Response:
    """Prometheus metrics: requests, errors and latency per route and per model, batch sizes,
    queue wait, model cache events and memory, jobs by status. Needs an admin or `metrics:read`
    key of the operator's tenant unless TUNESERVE_METRICS_PUBLIC is set."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
