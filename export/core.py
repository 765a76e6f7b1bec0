"""Turn an export plan (eager modules + metadata) into a verified, atomically published model version.

A family's export module builds an `ExportPlan` from its checkpoint; `publish` does the rest:
ONNX/TorchScript conversion, `onnx.checker`, parity against the eager model on sample inputs (run with
the service's own runtime classes), assets, a SHA-256 of every file, `manifest.json`, then one `rename` so the
service never sees a half-written version.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from families import repository_layout
from families.manifest import (
    MANIFEST_FILE,
    NUMPY_TO_OIP,
    Asset,
    Batching,
    GraphSpec,
    Manifest,
    Parity,
    RuntimeFormat,
    TensorSpec,
    TorchScriptCompanion,
    VersionPolicy,
    checksum_files,
    sha256_file,
)
from service.runtimes import Runtime, open_runtime
from service.runtimes.torchscript import TorchScriptRuntime

ONNX_OPSET = 18


BATCHING_OPTIONS = ("max_batch_size", "max_queue_delay_ms", "max_queue_size", "default_timeout_ms",
                    "delay_policy", "instance_count")


class ExportError(RuntimeError):
    """The export was refused; nothing was written."""


@dataclass
class GraphExport:
    """One graph to export.

    `samples` are parity inputs (ordered dicts, keys = input names in call order); the first one also
    defines dtypes and sample shapes. Axis 0 of every input/output is dynamic when `batchable`; more
    dynamic axes go in `dynamic_axes` ({input or output name: {axis: label}}).
    """

    name: str
    module: torch.nn.Module
    samples: list[dict[str, torch.Tensor]]
    output_names: list[str]
    format: RuntimeFormat = "onnx"
    batchable: bool = True
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    atol: float = 1e-4
    rtol: float = 1e-3

    @property
    def input_names(self) -> list[str]:
        return list(self.samples[0].keys())

    def all_dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for tensor_name in self.input_names + self.output_names:
            axes[tensor_name] = {0: "batch"} if self.batchable else {}
            axes[tensor_name].update(self.dynamic_axes.get(tensor_name, {}))
        return axes


@dataclass
class AssetFile:
    content: bytes | Path
    description: str = ""


@dataclass
class ExportPlan:
    family: str
    task: str
    graphs: list[GraphExport]
    primary_graph: str = "model"
    batching: Batching = field(default_factory=Batching)
    # The family's `families.<f>.contract.Preprocessing`: the service parses it back with the same class.
    preprocessing: BaseModel | None = None  # the family's contract model (families/<f>/contract.py)
    labels: list[str] | None = None
    assets: dict[str, AssetFile] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # Which older versions the service may load alongside the latest (the latest version's policy rules).
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)


OptionsT = TypeVar("OptionsT", bound=BaseModel)


def parse_options(model: type[OptionsT], options: Mapping[str, str] | None) -> OptionsT:
    """A family's export options (`--option key=value`, strings) validated by its options model; unknown or
    malformed options are an ExportError naming them."""
    try:
        return model.model_validate(dict(options or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
        raise ExportError(f"export options: {problems}") from None


def with_batching(plan: ExportPlan, overrides: dict[str, str]) -> ExportPlan:
    """Apply batching limits given as CLI strings (validated by `Batching`) over the family's defaults."""
    if overrides:
        plan.batching = Batching.model_validate({**plan.batching.model_dump(), **overrides})
    return plan


def split_batching_options(options: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(batching overrides, family options)."""
    batching = {k: v for k, v in options.items() if k in BATCHING_OPTIONS}
    return batching, {k: v for k, v in options.items() if k not in BATCHING_OPTIONS}


def _section(preprocessing: BaseModel | None) -> dict[str, Any]:
    return {} if preprocessing is None else preprocessing.model_dump(mode="json")


def code_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _to_numpy(value: Any) -> list[np.ndarray]:
    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().numpy()]
    if isinstance(value, Mapping):
        return [v.detach().cpu().numpy() for v in value.values()]
    return [v.detach().cpu().numpy() for v in value]


def _tensor_specs(names: list[str], arrays: list[np.ndarray], axes: dict[str, dict[int, str]]) -> list[TensorSpec]:
    specs = []
    for name, array in zip(names, arrays, strict=True):
        dtype = NUMPY_TO_OIP.get(array.dtype)
        if dtype is None:
            raise ExportError(f"tensor {name!r} has unsupported dtype {array.dtype}")
        shape = [-1 if axis in axes.get(name, {}) else dim for axis, dim in enumerate(array.shape)]
        specs.append(TensorSpec(name=name, datatype=dtype, shape=shape, sample_shape=list(array.shape)))
    return specs


def _write_onnx(graph: GraphExport, path: Path) -> None:
    import onnx

    sample = graph.samples[0]
    buffer = io.BytesIO()
    torch.onnx.export(
        graph.module,
        tuple(sample.values()),
        buffer,
        input_names=graph.input_names,
        output_names=graph.output_names,
        dynamic_axes=graph.all_dynamic_axes(),
        opset_version=ONNX_OPSET,
        dynamo=False,
        do_constant_folding=True,
    )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(buffer.getvalue())


def _device_follows_input(module: torch.jit.ScriptModule) -> int:
    """Make a frozen TorchScript graph device-agnostic: tracing records every tensor created inside the graph
    (torch.zeros(..., device=x.device), arange) with the export machine's device as a constant, and such a
    graph fails on CUDA (a CPU tensor meets CUDA ones). Each device constant is replaced by the device of the
    first tensor input, where the runtime puts every input. Returns the number of constants replaced."""
    graph = module.graph
    inputs = [v for v in graph.inputs() if v.type().isSubtypeOf(torch._C.TensorType.get())]
    constants = [n for n in graph.findAllNodes("prim::Constant", True)  # nested blocks too
                 if n.output().type().kind() == "DeviceObjType"]
    if not inputs or not constants:
        return 0
    device = graph.create("prim::device", [inputs[0]])
    device.output().setType(torch._C.DeviceObjType.get())
    device.insertBefore(next(iter(graph.nodes())))
    for constant in constants:
        constant.output().replaceAllUsesWith(device.output())
        constant.destroy()
    return len(constants)


def _write_torchscript(graph: GraphExport, path: Path) -> str:
    """Script the module (trace it where scripting cannot handle it), freeze it, save it; "script" or "trace"."""
    try:
        scripted = torch.jit.script(graph.module)
        method = "script"
    except Exception:  # noqa: BLE001 - fall back to tracing for modules scripting cannot handle
        with torch.no_grad():
            scripted = torch.jit.trace(graph.module, tuple(graph.samples[0].values()), check_trace=False)
        method = "trace"
    scripted = torch.jit.freeze(scripted.eval())
    _device_follows_input(scripted)
    torch.jit.save(scripted, str(path))
    return method


def _eager_outputs(graph: GraphExport) -> list[list[np.ndarray]]:
    """The eager module's outputs per parity sample (computed once: the ONNX graph and its twin share them)."""
    with torch.no_grad():
        return [_to_numpy(graph.module(*sample.values())) for sample in graph.samples]


def _check_parity(graph: GraphExport, runtime: Runtime, eager: list[list[np.ndarray]] | None = None) -> Parity:
    max_abs = 0.0
    max_rel = 0.0
    passed = True
    batch_sizes = []
    for sample, expected in zip(graph.samples, eager or _eager_outputs(graph), strict=True):
        got = runtime.run({k: v.detach().cpu().numpy() for k, v in sample.items()})
        batch_sizes.append(int(next(iter(sample.values())).shape[0]))
        for out_name, want in zip(graph.output_names, expected, strict=True):
            have = got[out_name]
            if have.shape != want.shape:
                raise ExportError(f"{graph.name}.{out_name}: exported shape {have.shape} != eager {want.shape}")
            if want.size == 0:
                continue
            diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
            max_abs = max(max_abs, float(diff.max()))
            rel = diff / np.maximum(np.abs(want.astype(np.float64)), graph.atol)
            max_rel = max(max_rel, float(rel.max()))
            if not np.all(diff <= graph.atol + graph.rtol * np.abs(want)):
                passed = False
    return Parity(max_abs_err=max_abs, max_rel_err=max_rel, atol=graph.atol, rtol=graph.rtol,
                  batch_sizes=batch_sizes, passed=passed)


def _build_companion(graph: GraphExport, spec: GraphSpec, version_dir: Path,
                     eager: list[list[np.ndarray]]) -> TorchScriptCompanion | str:
    """The TorchScript twin of an ONNX graph, parity-checked on the CPU; the reason when there is none (a
    graph that torch.jit cannot capture, or whose capture differs from the eager module): the ONNX graph is
    still published, and the service serves it through ONNX Runtime only."""
    file_name = f"{graph.name}.torchscript.pt"
    path = version_dir / file_name
    try:
        method = _write_torchscript(graph, path)
        # The interpreter without the profiling executor's fusion passes: what the graph computes, checked at a
        # third less CPU time than with them (the fused CUDA path is checked by the `gpu` tests).
        with torch.jit.optimized_execution(False):
            parity = _check_parity(graph, TorchScriptRuntime(path, spec, "cpu"), eager)
    except Exception as exc:  # noqa: BLE001 - the companion is optional; the ONNX graph stands on its own
        path.unlink(missing_ok=True)
        return f"torch.jit failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    if not parity.passed:
        path.unlink()
        return (f"differs from the eager model beyond tolerance: max abs {parity.max_abs_err:.3g} "
                f"(atol {parity.atol:g}), max rel {parity.max_rel_err:.3g} (rtol {parity.rtol:g})")
    return TorchScriptCompanion(file=file_name, method=method, torch_version=torch.__version__, parity=parity)


def _build_graph(graph: GraphExport, version_dir: Path, torchscript: bool, notes: dict[str, str]) -> GraphSpec:
    graph.module.eval()
    suffix = "onnx" if graph.format == "onnx" else "pt"
    file_name = f"{graph.name}.{suffix}"
    if graph.format == "onnx":
        _write_onnx(graph, version_dir / file_name)
    else:
        _write_torchscript(graph, version_dir / file_name)
    sample = graph.samples[0]
    with torch.no_grad():
        outputs = _to_numpy(graph.module(*sample.values()))
    axes = graph.all_dynamic_axes()
    spec = GraphSpec(
        file=file_name,
        format=graph.format,
        inputs=_tensor_specs(graph.input_names, [v.detach().cpu().numpy() for v in sample.values()], axes),
        outputs=_tensor_specs(graph.output_names, outputs, axes),
        batchable=graph.batchable,
    )
    eager = _eager_outputs(graph)
    spec.parity = _check_parity(graph, open_runtime(version_dir, spec, "cpu", runtime="onnx"), eager)
    if torchscript and graph.format == "onnx" and spec.parity.passed:
        companion = _build_companion(graph, spec, version_dir, eager)
        if isinstance(companion, str):
            notes[graph.name] = companion
        else:
            spec.torchscript = companion
    return spec


@contextmanager
def staged_version(repository: Path, name: str, version: int | None = None) -> Iterator[tuple[Path, int]]:
    """(staging folder, version) for a new `repository/name/version`, published atomically when the block ends
    (families.repository_layout.staged_version); an existing version is an ExportError."""
    try:
        with repository_layout.staged_version(repository / name, version) as staged:
            yield staged
    except repository_layout.VersionExists as exc:
        raise ExportError(str(exc)) from None


def publish(plan: ExportPlan, repository: Path, name: str, version: int | None = None,
            torchscript: bool = True) -> Path:
    """Export, verify and atomically publish `plan` as `repository/name/version`. Returns the version dir.

    `torchscript`: write a parity-checked TorchScript twin beside each ONNX graph (`GraphSpec.torchscript`),
    so that the version also serves through torch (CUDA without ONNX Runtime's CUDA provider)."""
    if plan.primary_graph not in {g.name for g in plan.graphs}:
        raise ExportError(f"primary graph {plan.primary_graph!r} is not among the exported graphs")
    with staged_version(repository, name, version) as (staging, version):
        notes: dict[str, str] = {}
        graphs = {g.name: _build_graph(g, staging, torchscript, notes) for g in plan.graphs}
        failed = {n: s.parity for n, s in graphs.items() if s.parity and not s.parity.passed}
        if failed:
            details = "; ".join(
                f"{n}: max abs {p.max_abs_err:.3g} (atol {p.atol:g}), max rel {p.max_rel_err:.3g} (rtol {p.rtol:g})"
                for n, p in failed.items()
            )
            raise ExportError(f"exported graph differs from the eager model beyond tolerance: {details}")
        assets = {}
        for asset_name, asset in plan.assets.items():
            target = staging / asset_name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(asset.content, Path):
                shutil.copyfile(asset.content, target)
            else:
                target.write_bytes(asset.content)
            assets[asset_name] = Asset(file=asset_name, sha256=sha256_file(target), description=asset.description)
        provenance = {
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "code_revision": code_revision(),
            "torch_version": torch.__version__,
            **plan.provenance,
        }
        if notes:  # why a graph has no TorchScript twin
            provenance["torchscript_missing"] = notes
        manifest = Manifest(
            name=name, version=version, family=plan.family, task=plan.task, primary_graph=plan.primary_graph,
            graphs=graphs, batching=plan.batching, preprocessing=_section(plan.preprocessing), labels=plan.labels,
            assets=assets, provenance=provenance, version_policy=plan.version_policy,
            files=checksum_files(staging),
        )
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
    return repository / name / str(version)
