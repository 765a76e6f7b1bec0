"""The service's settings: the platform's (`Settings`) and the base of each family's (`FamilySettings`).

A family's settings model lives with its plug-in (`service/families/<f>/settings.py`, declared by its
`FamilySpec.settings`) and reads `SERVICE_<F>_*`; `Settings.family(model)` builds it once per app. A setting that
had another name before it moved to its family keeps working under that name (`legacy_env`), with a deprecation
warning logged once per process.
"""

from __future__ import annotations

import logging
import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, PrivateAttr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

log = logging.getLogger(__name__)
PLATFORM_PREFIX = "SERVICE_"
_warned: set[str] = set()


def warn_renamed(old: str, new: str) -> None:
    """The deprecation of a renamed setting: a DeprecationWarning and a log line, once per name and process."""
    if old in _warned:
        return
    _warned.add(old)
    message = f"{old} is deprecated and will be removed: set {new} instead"
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    log.warning(message)


class FamilySettings(BaseSettings):
    """Base of a family's settings model. A subclass sets `model_config` with `env_prefix="SERVICE_<F>_"` and,
    for a field that had another variable name before, `legacy_env = {field: "SERVICE_OLD_NAME"}` (read when the
    new name is not set)."""

    model_config = SettingsConfigDict(extra="ignore")
    legacy_env: ClassVar[dict[str, str]] = {}

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: arguments, the new names, then the old names.
        return init_settings, env_settings, LegacyEnvSource(settings_cls), dotenv_settings, file_secret_settings

    @classmethod
    def env_name(cls, field: str) -> str:
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @classmethod
    def from_platform(cls, settings: Settings) -> FamilySettings:
        """The family's settings from the environment, overridden by keyword arguments given to `Settings`
        (tests, Ray's `settings`): the variable's name without `SERVICE_`, lower-case (`weld_faiss_min=1`), or
        its legacy name's (`gallery_url=...`, deprecated)."""
        given = settings.model_extra or {}
        overrides: dict[str, Any] = {}
        for field in cls.model_fields:
            current = cls.env_name(field).removeprefix(PLATFORM_PREFIX).lower()
            legacy = cls.legacy_env.get(field, "").removeprefix(PLATFORM_PREFIX).lower()
            if current in given:
                overrides[field] = given[current]
            elif legacy and legacy in given:
                warn_renamed(f"the setting {legacy!r}", f"{current!r} ({cls.env_name(field)})")
                overrides[field] = given[legacy]
        return cls(**overrides)


class LegacyEnvSource(PydanticBaseSettingsSource):
    """A family setting's old environment variable (`FamilySettings.legacy_env`), with a deprecation warning."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        model: type[FamilySettings] = self.settings_cls  # type: ignore[assignment]
        environ = {k.upper(): v for k, v in os.environ.items()}
        found: dict[str, Any] = {}
        for field, old in model.legacy_env.items():
            if old.upper() in environ and model.env_name(field) not in environ:  # the new name wins, silently
                warn_renamed(old, model.env_name(field))
                found[field] = environ[old.upper()]
        return found


FamilySettingsT = TypeVar("FamilySettingsT", bound=FamilySettings)


class Settings(BaseSettings):
    """Every setting of the platform, from `SERVICE_*` environment variables (the listener's from the conventional
    `HOST`, `PORT`, `LOG_LEVEL`, `GRACEFUL_TIMEOUT_S`, `ACCESS_LOG`); each family's are `family(model)`. Nothing
    else in service/ reads `os.environ`. Keyword arguments that are no field are kept for the families' models."""

    model_config = SettingsConfigDict(env_prefix=PLATFORM_PREFIX, extra="allow", populate_by_name=True)
    _families: dict[type, FamilySettings] = PrivateAttr(default_factory=dict)

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
    # Work pool for decoding and preprocessing (service/dataplane/workpool.py): threads, and jobs queued + running
    # beyond which requests get 429 before their body is decoded.
    work_threads: int = Field(2, ge=1)
    max_pending_work: int = Field(64, ge=1)
    # Put ONNX Runtime's TensorRT execution provider first on GPU (when the build has it).
    ort_tensorrt: bool = False
    # HTTP connection guards (service/http/protocol.py, applied by `python -m service`).
    max_connections: int = Field(2048, ge=1, description="open connections of all clients; 503 beyond, "
                                                         "health probes and /metrics exempt")
    max_connections_per_client: int = Field(256, ge=0, description="open connections per peer address; "
                                                                   "0 = unbounded (set 0 behind a proxy)")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line + headers; 431 beyond")
    header_timeout_s: float = Field(10.0, gt=0, description="seconds to complete request headers")
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
    # Triton serves the repository index to anyone; set true to put it behind the admin token too.
    restrict_repository_index: bool = False
    # /docs and /redoc load Swagger UI and Redoc from the service itself (service/http/docs_ui.py, works offline);
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

    def family(self, model: type[FamilySettingsT]) -> FamilySettingsT:
        """A family's settings (its plug-in's `FamilySpec.settings`), read once per `Settings`."""
        found = self._families.get(model)
        if found is None:
            found = self._families[model] = model.from_platform(self)
        return found  # type: ignore[return-value]
