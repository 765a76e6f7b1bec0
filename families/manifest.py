"""The artifact contract: `model_repository/<model>/<version>/manifest.json`.

Export writes it, the service reads it; nothing else travels between them. Datatypes use the Open
Inference Protocol names (FP32, INT64, ...) so that `/v2` metadata is the manifest verbatim.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

MANIFEST_FILE = "manifest.json"
# 2: `files` carries the SHA-256 of every file of the version (graphs too), and `version_policy`.
SCHEMA_VERSION = 2

# OIP datatype name <-> numpy dtype.
OIP_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_OIP: dict[np.dtype, str] = {v: k for k, v in OIP_TO_NUMPY.items()}

RuntimeFormat = Literal["onnx", "torchscript"]
SectionT = TypeVar("SectionT", bound=BaseModel)


class TensorSpec(BaseModel):
    """One input or output of a graph. `shape` uses -1 for dynamic axes; axis 0 is the batch axis."""

    model_config = ConfigDict(extra="forbid")

    name: str
    datatype: str = "FP32"
    shape: list[int]
    # Concrete shape used for warm-up and parity samples (dynamic axes filled in); defaults to -1 -> 1.
    sample_shape: list[int] | None = None

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in OIP_TO_NUMPY:
            raise ValueError(f"unknown datatype {value!r}; expected one of {sorted(OIP_TO_NUMPY)}")
        return value

    @property
    def numpy_dtype(self) -> np.dtype:
        return OIP_TO_NUMPY[self.datatype]

    def concrete_sample_shape(self) -> list[int]:
        if self.sample_shape is not None:
            return list(self.sample_shape)
        return [1 if dim < 0 else dim for dim in self.shape]


class Batching(BaseModel):
    """Dynamic batcher limits (Triton's `dynamic_batching` in spirit)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1)
    max_queue_delay_ms: float = Field(2.0, ge=0)
    max_queue_size: int = Field(128, ge=1)
    default_timeout_ms: float = Field(30_000, gt=0)
    # "adaptive": a request reaching an idle model that no other request is likely to join within the delay
    # is sent at once; "fixed": always wait up to max_queue_delay_ms for a full batch (Triton's behaviour).
    delay_policy: Literal["adaptive", "fixed"] = "adaptive"
    # Concurrent executions per version (Triton's instance_group count), each with its own session.
    instance_count: int = Field(1, ge=1, le=16)


class Parity(BaseModel):
    """Export check of one graph against the eager model."""

    max_abs_err: float
    max_rel_err: float
    atol: float
    rtol: float
    batch_sizes: list[int]
    passed: bool


class TorchScriptCompanion(BaseModel):
    """A TorchScript graph exported beside an ONNX graph, with the same signature and its own parity check:
    what the service runs through torch where ONNX Runtime cannot use the device (`SERVICE_RUNTIME`, e.g. a
    CUDA machine whose onnxruntime has no CUDA execution provider)."""

    model_config = ConfigDict(extra="forbid")

    file: str
    method: Literal["script", "trace"]  # how torch.jit captured the eager module
    torch_version: str  # a TorchScript file is only trusted on the torch that wrote it (rebuild elsewhere)
    parity: Parity


class GraphSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    format: RuntimeFormat
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # False for graphs whose axis 0 is not a batch axis (the service then never concatenates requests).
    batchable: bool = True
    parity: Parity | None = None
    # ONNX graphs only: the same graph as TorchScript (absent in versions exported before it existed).
    torchscript: TorchScriptCompanion | None = None

    @model_serializer(mode="wrap")
    def _no_companion_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out rather than null: versions without a companion keep their manifests (and /v2 metadata).
        data = handler(self)
        if self.torchscript is None:
            data.pop("torchscript", None)
        return data


class Asset(BaseModel):
    file: str
    sha256: str
    description: str = ""


class VersionPolicy(BaseModel):
    """Which versions of a model may be served besides the latest one (Triton's `version_policy`).

    `latest`: the newest `num_versions` on disk; `all`: every version; `specific`: `versions`. The latest
    version is always served; the others load lazily when asked for (e.g. a codec stream of an old version).
    The latest version's manifest decides for the whole model.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = Field(1, ge=1)
    versions: list[int] = []

    def keeps(self, version: int, on_disk: list[int]) -> bool:
        """Whether `version` may be loaded, given the sorted versions on disk."""
        if version not in on_disk:
            return False
        if self.kind == "all" or version == on_disk[-1]:
            return True
        if self.kind == "specific":
            return version in self.versions
        return version in on_disk[-self.num_versions:]


class PreprocessingSection(BaseModel):
    """Base of every family's `Preprocessing` (families/<f>/contract.py): a part that defaults to None and is
    None is left out of the manifest, not written as null, so that versions without it keep the layout that
    manifests written before the part existed have."""

    @model_serializer(mode="wrap")
    def _absent_parts_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name, field in type(self).model_fields.items():
            if field.default is None and getattr(self, name) is None:
                data.pop(field.alias or name, None)
                data.pop(name, None)
        return data


class ChecksumError(RuntimeError):
    """A file of a version does not match its manifest: a corrupted or altered artifact."""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str
    version: int
    family: str
    task: str
    # Graph served by `/v2/models/{name}` and warmed up first; families may ship more graphs.
    primary_graph: str = "model"
    graphs: dict[str, GraphSpec]
    batching: Batching = Batching()
    preprocessing: dict[str, Any] = {}
    labels: list[str] | None = None
    assets: dict[str, Asset] = {}
    provenance: dict[str, Any] = {}
    version_policy: VersionPolicy = VersionPolicy()
    # SHA-256 of every file of the version but the manifest, by path relative to the version folder.
    files: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError(f"model name {value!r} must be letters, digits, '-' or '_'")
        return value

    @model_validator(mode="after")
    def _every_file_checksummed(self) -> Manifest:
        # Schema 1 predates graph checksums; from 2 on, a graph or asset without one is a broken export.
        if self.schema_version >= 2:
            named = ({g.file for g in self.graphs.values()} | {a.file for a in self.assets.values()}
                     | {g.torchscript.file for g in self.graphs.values() if g.torchscript is not None})
            missing = sorted(named - set(self.files))
            if missing:
                raise ValueError(f"files {missing} have no checksum in `files`")
        return self

    @property
    def primary(self) -> GraphSpec:
        return self.graphs[self.primary_graph]

    def preprocessing_as(self, section: type[SectionT]) -> SectionT:
        """The `preprocessing` section parsed by the family's contract model (`families.<f>.contract`), the
        same class export wrote it from; a version whose section does not fit it fails to load, naming why."""
        try:
            return section.model_validate(self.preprocessing)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'section'}: {e['msg']}"
                                 for e in exc.errors(include_url=False)[:5])
            raise ValueError(f"{self.name} v{self.version}: manifest `preprocessing` does not fit the "
                             f"{self.family} contract: {problems}") from None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"

    @classmethod
    def read(cls, version_dir: Path) -> Manifest:
        return cls.model_validate_json((version_dir / MANIFEST_FILE).read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_version_name(folder: str) -> bool:
    """A version folder is named by a canonical ASCII decimal ("1", not "01" or "¹", which isdigit() accepts)."""
    return folder.isascii() and folder.isdigit() and str(int(folder)) == folder


def version_files(version_dir: Path) -> list[str]:
    """Every file of a version folder except the manifest, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*")
                  if p.is_file() and p.name != MANIFEST_FILE)


def checksum_files(version_dir: Path) -> dict[str, str]:
    """The `files` map of a manifest: SHA-256 of every file of the version."""
    return {name: sha256_file(version_dir / name) for name in version_files(version_dir)}


def verify_files(version_dir: Path, manifest: Manifest) -> None:
    """Raise ChecksumError unless the folder holds exactly the manifest's files with their checksums.

    Messages name files relative to the version folder only (they reach API clients)."""
    if manifest.schema_version < 2:
        # Older exports checksummed their assets only.
        for asset_name, asset in manifest.assets.items():
            if sha256_file(version_dir / asset.file) != asset.sha256:
                raise ChecksumError(f"asset {asset_name!r} checksum mismatch (corrupted artifact)")
        return
    present = version_files(version_dir)
    unlisted = sorted(set(present) - set(manifest.files))
    if unlisted:
        raise ChecksumError(f"files {unlisted[:5]} are not in the manifest (altered artifact)")
    absent = sorted(set(manifest.files) - set(present))
    if absent:
        raise ChecksumError(f"files {absent[:5]} of the manifest are missing (incomplete artifact)")
    for name, expected in manifest.files.items():
        if sha256_file(version_dir / name) != expected:
            raise ChecksumError(f"file {name!r} does not match its SHA-256 in the manifest (corrupted artifact)")
