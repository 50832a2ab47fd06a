"""Service settings: one object, read from the environment (prefix TUNESERVE_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything configurable. Tests build their own instance instead of reading the env."""

    model_config = SettingsConfigDict(env_prefix="TUNESERVE_", extra="ignore")

    data_dir: Path = Path("tuneserve-data")
    # Defaults to SQLite under data_dir when unset.
    database_url: str | None = None
    # When unset, `tuneserve up` starts an embedded Redis server and sets this for its children.
    redis_url: str | None = None

    # Uploads and request limits.
    max_upload_bytes: int = 1024 * 1024 * 1024
    max_dataset_rows: int = 2_000_000
    max_text_chars: int = 100_000
    # One line of a CSV, TSV or JSONL upload; at least max_text_chars (a line holds a whole cell).
    max_line_bytes: int = 1024 * 1024
    # Nesting of JSON uploads and JSON request bodies (arrays and objects inside each other).
    max_json_depth: int = 64
    # What a Parquet upload may decode to in memory (compression makes it far larger than the file);
    # parsing and validating take several times this, all within upload_parse_memory_bytes.
    max_decoded_bytes: int = 256 * 1024 * 1024
    # Columns of an upload (CSV/TSV fields, JSON keys, Parquet fields), checked before the rows.
    max_columns: int = Field(default=1000, ge=1)
    # Uploads are parsed in separate processes (app/dataset/isolation.py), at most this many at
    # once per API process, each job within this much memory (beyond the process's own, imports
    # done) and this much time; past either the upload gets a 413 and its process is replaced.
    upload_parse_workers: int = Field(default=2, ge=1, le=64)
    upload_parse_memory_bytes: int = Field(default=3 * 1024**3, ge=64 * 1024**2)
    upload_parse_timeout_seconds: float = Field(default=300.0, gt=0)
    # Free space kept on the data dir's filesystem: uploads that would eat into it get a 507.
    min_free_disk_bytes: int = 1024 * 1024 * 1024
    # JSON bodies (everything but dataset uploads, which have max_upload_bytes).
    max_request_bytes: int = 16 * 1024 * 1024
    max_predict_inputs: int = 256
    max_predict_text_chars: int = 20_000

    # Base models: a folder of local model directories, and hub ids allowed to be named.
    local_models_dir: Path | None = None
    allowed_hub_models: list[str] = Field(default_factory=list)

    # Access. When set, this key is registered as an admin key of the default tenant at start.
    bootstrap_admin_key: str | None = Field(default=None, repr=False)
    # Per API key: a sustained rate and a burst (token bucket per API process); 0 turns it off.
    rate_limit_per_minute: int = 1200
    rate_limit_burst: int = 200
    # Valid API keys and model/alias lookups are remembered this long per API process, so busy
    # callers skip the database: a key revoked or an alias moved by another API process (or the
    # CLI) takes effect within this time; through the same process, at once. 0: no remembering.
    lookup_cache_seconds: float = Field(default=2.0, ge=0, le=300)
    # Queued plus running jobs one tenant may have at once; 0 means no cap.
    max_active_jobs_per_tenant: int = 10

    # Serving.
    # Models kept loaded for /predict: at most this many, within this many bytes of weights (a
    # shared base counted once); the least recently used go first.
    predictor_cache_size: int = Field(default=64, ge=1)
    predictor_cache_bytes: int = Field(default=4 * 1024**3, ge=1)
    # Model ids loaded when the API starts (in the background), so their first request is fast.
    preload_models: list[str] = Field(default_factory=list)
    inference_threads: int = 1
    # Model-executing threads per API process (each with inference_threads torch threads); unset:
    # one per core left after inference_threads each, at most 4.
    model_threads: int | None = Field(default=None, ge=1, le=64)
    # Micro-batching of concurrent /predict calls (see app/predict/batcher.py): the longest a call
    # waits for others while the model is under load, and the padded tokens of one model call.
    batching: bool = True
    batch_max_wait_ms: float = Field(default=2.0, ge=0, le=100)
    batch_max_tokens: int = Field(default=8192, ge=64)
    # /predict requests whose texts hold at most this many characters are tokenized and
    # post-processed on the API's event loop, larger ones in a worker thread (0: always a thread).
    # At 500, all-MiniLM-L6-v2's tokenizer holds the loop about 0.2 ms for classification and 0.7
    # ms for NER, where the hop to a thread costs about 0.4 ms of CPU.
    predict_loop_max_chars: int = Field(default=500, ge=0, le=100_000)
    # /metrics without a key (for a scraper on a private network); else an operator key is needed.
    metrics_public: bool = False
    # The dashboard (/ui): how long a sign-in lasts, and whether its cookie is marked Secure
    # ("auto": when the request came over HTTPS, as a proxy's X-Forwarded-Proto says to uvicorn).
    ui_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    ui_secure_cookie: Literal["auto", "always", "never"] = "auto"

    # Training (worker side).
    training_threads: int | None = None
    # Import the training libraries (torch, transformers, peft, datasets: about 6 s of CPU) once in
    # the worker's parent process, so that each job's fresh child process forks with them loaded.
    # "auto": where no NVIDIA GPU is found (CUDA must first start in a child, never before a fork).
    worker_preload: Literal["auto", "yes", "no"] = "auto"
    # What the workers train on, as the API judges job specs (mixed precision needs a CUDA GPU).
    # "auto": what torch sees in the API process; set "cuda" for an API on a machine without the
    # workers' GPUs.
    worker_device: Literal["auto", "cpu", "cuda"] = "auto"
    cancel_poll_seconds: float = 1.0

    # Recovery. A worker heartbeats a running job every `heartbeat_seconds`; the reaper re-queues
    # a running job silent for `heartbeat_timeout_seconds` (or fails it after `max_attempts`),
    # and republishes a queued job whose message the broker no longer holds.
    heartbeat_seconds: float = 5.0
    heartbeat_timeout_seconds: float = 60.0
    max_attempts: int = Field(default=3, ge=1)
    relay_interval_seconds: float = 1.0
    reaper_interval_seconds: float = 5.0
    # A queued job's message is looked for in the broker only after this long.
    republish_after_seconds: float = 30.0
    # How long a worker keeps retrying its final writes while the database is unreachable.
    db_retry_seconds: float = 300.0

    # Where datasets, model artifacts and checkpoints live: unset, the data directory itself
    # (file://); or an S3-compatible store, s3://bucket/prefix, reached with the standard
    # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION.
    storage_url: str | None = None
    # This process's cache of trees fetched from an S3 store (default <data_dir>/cache): the least
    # recently used go once it holds more than `cache_max_bytes`.
    cache_dir: Path | None = None
    cache_max_bytes: int = Field(default=20 * 1024**3, ge=0)
    # How long a transient store failure is retried before the call fails (a worker's job then
    # ends failed with error code storage_unavailable); an upload gives up sooner, answering 503.
    storage_retry_seconds: float = Field(default=300.0, ge=0)
    upload_storage_retry_seconds: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _line_holds_a_cell(self) -> Settings:
        if self.max_line_bytes < self.max_text_chars:
            raise ValueError(
                f"max_line_bytes ({self.max_line_bytes}) must be at least max_text_chars "
                f"({self.max_text_chars}): a line must be able to hold the longest cell"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tuneserve.db').resolve()}"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
