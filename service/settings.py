from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration, from `SERVICE_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="SERVICE_", extra="ignore")

    model_repository: Path = Path("model_repository")
    state_dir: Path = Path("state")
    device: str = "auto"
    # Comma-separated model names to load at start; empty = every model in the repository.
    models: str = ""
    admin_token: str | None = None
    max_request_bytes: int = Field(64 * 1024 * 1024, gt=0)
    cpu_threads: int = Field(0, ge=0, description="intra-op threads per model; 0 = runtime default")
    strict_readiness: bool = True
    # Work pool for decoding and preprocessing (service/workpool.py): threads, and jobs queued + running
    # beyond which requests get 429 before their body is decoded.
    work_threads: int = Field(2, ge=1)
    max_pending_work: int = Field(64, ge=1)
    # Put ONNX Runtime's TensorRT execution provider first on GPU (when the build has it).
    ort_tensorrt: bool = False
    # Extra seconds a draining version waits for in-flight work after a swap or unload.
    drain_timeout_s: float = 30.0
    gpu_metrics_interval_s: float = 5.0
    # HTTP connection guards (service/http_protocol.py, applied by `python -m service`).
    max_connections: int = Field(2048, ge=1, description="open connections of all clients; 503 beyond, "
                                                         "health probes and /metrics exempt")
    max_connections_per_client: int = Field(256, ge=0, description="open connections per peer address; "
                                                                   "0 = unbounded (set 0 behind a proxy)")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line + headers; 431 beyond")
    header_timeout_s: float = Field(10.0, gt=0, description="seconds to complete request headers")
    # Triton serves the repository index to anyone; set true to put it behind the admin token too.
    restrict_repository_index: bool = False

    @cached_property
    def model_allowlist(self) -> set[str]:
        return {m.strip() for m in self.models.split(",") if m.strip()}
