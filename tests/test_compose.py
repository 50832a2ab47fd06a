"""docker-compose.yml keeps the shape the README promises: processes that share no disk, only
PostgreSQL, Redis and an S3-compatible store; workers that scale; a GPU worker on its queue.
(No Docker engine runs in the tests: this checks the file itself.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
TUNESERVE = ("migrate", "api", "worker", "relay", "worker-gpu")


def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def test_the_tuneserve_services_share_no_volume_only_the_database_broker_and_store() -> None:
    found = services()
    for name in TUNESERVE:
        service = found[name]
        assert not service.get("volumes"), f"{name} mounts {service.get('volumes')}"
        env = service["environment"]
        assert env["TUNESERVE_STORAGE_URL"].startswith("s3://"), name
        assert env["TUNESERVE_DATABASE_URL"].startswith("postgresql"), name
        assert env["TUNESERVE_REDIS_URL"].startswith("redis://"), name
        endpoint = env["AWS_ENDPOINT_URL"].split("//")[1].split(":")[0]
        assert endpoint in found, f"{name} signs for {endpoint}, which compose does not run"
        assert env["AWS_ACCESS_KEY_ID"] == found[endpoint]["environment"]["AWS_ACCESS_KEY_ID"]


def test_the_store_is_a_maintained_s3_server() -> None:
    store = services()["seaweedfs"]
    assert store["image"].split(":")[0] in {"chrislusf/seaweedfs", "dxflrs/garage"}
    assert "-s3" in store["command"] and not store.get("ports")  # not published to the host


def test_workers_scale_and_a_gpu_worker_serves_the_gpu_queue() -> None:
    found = services()
    worker, gpu = found["worker"], found["worker-gpu"]
    # --scale worker=3 needs no fixed name, host port or volume.
    assert not {"container_name", "ports", "volumes"} & set(worker)
    assert worker["command"][-2:] == ["--queues", "training"]
    assert gpu["command"][-2:] == ["--queues", "gpu"] and gpu["profiles"] == ["gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX_URL"].rsplit("/", 1)[1]
    assert found["migrate"]["command"] == ["tuneserve", "migrate"]  # makes the bucket too
