from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the service, from `SERVICE_*` environment variables (the listener's from the conventional
    `HOST`, `PORT`, `LOG_LEVEL`, `GRACEFUL_TIMEOUT_S`, `ACCESS_LOG`). Nothing in service/ reads `os.environ` itself."""

    model_config = SettingsConfigDict(env_prefix="SERVICE_", extra="ignore", populate_by_name=True)

    # `python -m service` (uvicorn): listen address, log level, graceful drain on SIGTERM, access log.
    host: str = Field("127.0.0.1", validation_alias="HOST")
    port: int = Field(8000, ge=0, le=65535, validation_alias="PORT")
    log_level: str = Field("info", validation_alias="LOG_LEVEL")
    graceful_timeout_s: float = Field(60.0, ge=0, description="seconds to finish accepted requests after SIGTERM",
                                      validation_alias="GRACEFUL_TIMEOUT_S")
    access_log: bool = Field(False, validation_alias="ACCESS_LOG")
    # gRPC (service/grpc): inference.GRPCInferenceService on HOST:GRPC_PORT beside HTTP (Triton's 8001); 0 = off.
    grpc_port: int = Field(8001, ge=0, le=65535, validation_alias="GRPC_PORT")

    model_repository: Path = Path("model_repository")
    state_dir: Path = Path("state")
    device: str = "auto"
    # Runtime of ONNX graphs that have a TorchScript twin: `auto` = torch on CUDA when onnxruntime has no CUDA
    # provider, ONNX Runtime otherwise; `onnx`; `torch` (service/runtimes/__init__.py, choose_format).
    runtime: Literal["auto", "onnx", "torch"] = "auto"
    # Comma-separated model names to load at start; empty = every model in the repository.
    models: str = ""
    admin_token: str | None = None
    max_request_bytes: int = Field(64 * 1024 * 1024, gt=0)
    # Bytes that queued requests may hold together (decoded tensors, images) across every batcher: 429 beyond.
    max_queued_bytes: int = Field(1 << 30, gt=0)
    cpu_threads: int = Field(0, ge=0, description="intra-op threads per model; 0 = runtime default")
    strict_readiness: bool = True
    # Work pool for decoding and preprocessing (service/workpool.py): threads, and jobs queued + running
    # beyond which requests get 429 before their body is decoded.
    work_threads: int = Field(2, ge=1)
    max_pending_work: int = Field(64, ge=1)
    # Put ONNX Runtime's TensorRT execution provider first on GPU (when the build has it).
    ort_tensorrt: bool = False
    # HTTP connection guards (service/http_protocol.py, applied by `python -m service`).
    max_connections: int = Field(2048, ge=1, description="open connections of all clients; 503 beyond, "
                                                         "health probes and /metrics exempt")
    max_connections_per_client: int = Field(256, ge=0, description="open connections per peer address; "
                                                                   "0 = unbounded (set 0 behind a proxy)")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line + headers; 431 beyond")
    header_timeout_s: float = Field(10.0, gt=0, description="seconds to complete request headers")
    # Live quality (docs/quality.md): served traffic forecasts kept per model version to score against
    # observations (count, memory and age bounds), the window of the weld OOD gauge.
    quality_forecasts: int = Field(1024, ge=0, description="forecast windows kept per version; 0 = off")
    quality_forecasts_mb: float = Field(64.0, gt=0, description="memory bound of the kept forecasts per version")
    quality_forecast_ttl_s: float = Field(7200.0, gt=0, description="seconds a kept forecast waits for actuals")
    quality_ood_window: int = Field(256, ge=1, description="recent weld samples behind quality_ood_ratio")
    # Sampled quality checks (docs/quality.md): the share of codec compressions decoded again to measure
    # PSNR, and of water requests reconstructed a second time with a few visible values hidden.
    quality_codec_psnr_fraction: float = Field(0.05, ge=0, le=1, description="compressions also decoded for PSNR")
    quality_water_selfcheck_fraction: float = Field(0.05, ge=0, le=1, description="water requests self-checked")
    # Garbage collector (service/gc_tuning.py): freeze the start-up heap and each loaded model, thresholds.
    gc_freeze: bool = True
    gc_thresholds: str = Field("2000,25,1000", description="gc.set_threshold(g0, g1, g2)")
    # Model instances (Triton's instance_group count): "N" for every model, or "model=N,other=M"; empty or 0
    # = the manifest's `batching.instance_count`.
    instances: str = ""
    # A graph batch estimated (from measured runs, per input byte) to compute in less than this runs on the
    # event loop instead of a worker thread (the hop costs more than such a batch); 0 = always on a thread.
    inline_compute_ms: float = Field(0.25, ge=0, le=5)
    # FastAPI's native OpenTelemetry spans and metrics (needs a configured provider); Prometheus is always on.
    otel_telemetry: bool = False
    # Enrolled weld references (families/weld/gallery_db.py): empty = SQLite at `<state_dir>/gallery.sqlite3`,
    # `sqlite:///<path>` another SQLite file, `postgresql://...` a PostgreSQL database shared by every replica.
    gallery_url: str = ""
    # A weld gallery of at least this many references (shipped + enrolled) is searched through an exact FAISS
    # index (faiss-cpu, the `faiss` extra; CPU serving only) instead of torch's matmul + top-k; 0 = never.
    weld_faiss_min: int = Field(0, ge=0)
    # Triton serves the repository index to anyone; set true to put it behind the admin token too.
    restrict_repository_index: bool = False
    # /docs and /redoc load Swagger UI and Redoc from the service itself (service/docs_ui.py, works offline);
    # true = from the public CDN, as stock FastAPI does.
    docs_cdn: bool = False
    # Base URL of the Grafana that shows this service's dashboards (docker/grafana), e.g. http://localhost:3000;
    # the landing page at / links to them when it is set.
    grafana_url: str = ""
    # The X-Replica header of every response (deploy/ray sets `<deployment>#<replica id>`); empty = `<host>:<pid>`.
    replica_name: str = ""

    @cached_property
    def model_allowlist(self) -> set[str]:
        return {m.strip() for m in self.models.split(",") if m.strip()}
