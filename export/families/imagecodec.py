"""Export plan for the HPCM image codec: every network the codec procedure runs is its own graph
(g_a, h_a, h_s, g_s, ctx_init, step_2 .. step_11), with dynamic height/width, plus the integer pmf
tables as an asset. The procedure itself lives in families/imagecodec/codec.py, the manifest section it
writes in families/imagecodec/contract.py.

    python -m export imagecodec --checkpoint runs/ic/q3/checkpoint.pt [--name imagecodec-q3]
        [--option format=onnx|torchscript] [--option max_pixels=N] [--option max_aspect=N] [--option name=M]
        [--option step=D --option quality=Q]   (a level of the checkpoint at quantisation step D)

A variable-rate checkpoint (trained levels, `CodecConfig.levels`) exports one level with `--option level=K`:
its per-channel steps and lambda go into the manifest (and the held-out figures the checkpoint carries, see
`training.imagecodec.default.store_half`, into the provenance); `publish_levels` with levels {quality: None}
publishes every trained level from one export.

A quantisation step changes no graph, only the procedure (families/imagecodec/codec.py): `derive_level`
makes the version of another level from a published one by linking its graphs and writing a manifest with
the level's step, quality and hash (what `make serve` does for q1, q3 and q4 from the one checkpoint).

ONNX and TorchScript versions of one checkpoint share the model hash (a hash of the weights), so a
stream written by one decodes on the other (see the codec module for why that is exact on the latent).
Versions are published with the version policy `all`: stored streams outlive model updates, since the
service loads the version whose hash a stream carries.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from export.core import AssetFile, ExportPlan, GraphExport, parse_options
from families.imagecodec.codec import GRAPH_INPUTS, GRAPH_OUTPUTS, MAX_ASPECT, PAD_MULTIPLE, encode
from families.imagecodec.contract import PRIMARY_GRAPH, TABLES_ASSET, Preprocessing, level_hash, level_name
from families.manifest import MANIFEST_FILE, Batching, Manifest, VersionPolicy, checksum_files
from families.repository_layout import latest_version, latest_version_dir
from training.imagecodec.model import count_parameters, state_hash
from training.imagecodec.networks import TorchNetworks, build_tables, codec_model, graph_modules
from training.imagecodec.train import load_checkpoint

TASK = "image-compression"
SAMPLE_SIZES = ((64, 128), (128, 64))  # two image sizes -> parity checks the dynamic spatial axes


class _Recorder(TorchNetworks):
    """Runs the eager graphs and keeps the first inputs each graph sees (realistic parity samples)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.seen: dict[str, dict[str, np.ndarray]] = {}

    def __call__(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.setdefault(graph, {k: v.copy() for k, v in inputs.items()})
        return super().__call__(graph, inputs)


def _samples(model, name: str, step: float | tuple[float, ...] = 1.0) -> dict[str, list[dict[str, torch.Tensor]]]:
    rng = np.random.default_rng(0)
    samples: dict[str, list[dict[str, torch.Tensor]]] = {g: [] for g in GRAPH_INPUTS}
    cm = codec_model(model, name, step=step)
    for h, w in SAMPLE_SIZES:
        image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        recorder = _Recorder(model)
        data, _ = encode(image, recorder, cm)
        for graph, inputs in recorder.seen.items():
            samples[graph].append({k: torch.from_numpy(v) for k, v in inputs.items()})
        y_hat = recorder("g_a", {"x": recorder.seen["g_a"]["x"]})["y"]
        samples["g_s"].append({"y_hat": torch.from_numpy(np.round(y_hat))})
    return samples


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "torchscript"] = "onnx"
    name: str = "imagecodec"  # the model name the parity samples' streams carry
    max_pixels: int = Field(2048 * 2048, gt=0)  # padded area; ~40 s of CPU coding at the limit
    max_aspect: int = Field(MAX_ASPECT, gt=0)  # padded long side / short side
    step: float = Field(1.0, gt=0, allow_inf_nan=False)  # quantisation step of y (1: the trained point)
    quality: int | None = Field(None, ge=1, le=6)  # the level served (default: the checkpoint's)
    level: int | None = Field(None, ge=1)  # a trained level of a variable-rate checkpoint (its steps, lambda)


def trained_level(extras: dict, model, level: int) -> tuple[tuple[float, ...], float | None, dict | None]:
    """(per-channel steps, lambda, measured held-out figures) of trained level `level` (1-based)."""
    if not model.cfg.levels:
        raise ValueError("option level is for variable-rate checkpoints; this one has one operating point")
    if not 1 <= level <= model.cfg.levels:
        raise ValueError(f"level {level} is not one of the checkpoint's 1..{model.cfg.levels}")
    with torch.no_grad():
        steps = tuple(model.level_steps(level - 1).double().tolist())
    lambdas = extras.get("lambdas") or [None] * model.cfg.levels
    return steps, lambdas[level - 1], (extras.get("heldout") or {}).get(str(level))


def plan_from_checkpoint(checkpoint: Path, options: Mapping[str, str] | None = None) -> ExportPlan:
    opts = parse_options(ExportOptions, options)
    fmt = opts.format
    loaded = load_checkpoint(Path(checkpoint))
    model, extras = loaded.model, loaded.extras
    step: float | tuple[float, ...] = opts.step
    lmbda, heldout, quality = extras["lambda"], None, opts.quality if opts.quality is not None else extras["quality"]
    if model.cfg.levels:
        if opts.step != 1.0:
            raise ValueError("a variable-rate checkpoint codes with its levels' steps: give option level, not step")
        level = opts.level or 1
        step, lmbda, heldout = trained_level(extras, model, level)
        quality = opts.quality if opts.quality is not None else level
    elif opts.level is not None:
        trained_level(extras, model, opts.level)  # raises: no trained levels
    tables = build_tables(model)
    samples = _samples(model, opts.name, step)
    graphs = []
    for graph, module in graph_modules(model).items():
        axes = {}
        for tensor in GRAPH_INPUTS[graph] + GRAPH_OUTPUTS[graph]:
            axes[tensor] = {2: f"{tensor}_height", 3: f"{tensor}_width"}
        graphs.append(GraphExport(
            name=graph, module=module, samples=samples[graph], output_names=list(GRAPH_OUTPUTS[graph]),
            format=fmt, batchable=False, dynamic_axes=axes, atol=2e-4, rtol=1e-3,
        ))
    cfg = model.cfg
    return ExportPlan(
        family="imagecodec", task=TASK, graphs=graphs, primary_graph=PRIMARY_GRAPH,
        batching=Batching(max_batch_size=1, max_queue_delay_ms=0.0, max_queue_size=16, default_timeout_ms=60_000),
        version_policy=VersionPolicy(kind="all"),  # every stream ever written stays decodable
        preprocessing=Preprocessing(
            pad_multiple=PAD_MULTIPLE, M=cfg.M, N=cfg.N, max_pixels=opts.max_pixels, max_aspect=opts.max_aspect,
            model_hash=level_hash(bytes.fromhex(state_hash(model)[:16]), step).hex(),
            quality=quality, lmbda=lmbda, step=list(step) if isinstance(step, tuple) else step,
        ),
        assets={TABLES_ASSET: AssetFile(tables.to_bytes(), "integer pmf tables (y per scale index, z per channel)")},
        provenance={"training": extras.get("provenance", {}), "config": cfg.to_dict(),
                    "parameters": count_parameters(model), "format": fmt,
                    "level": _level_note(extras["quality"], step, lmbda),
                    **({"heldout": heldout} if heldout else {})},
    )


def _level_note(trained_quality: int | None, step: float | tuple[float, ...], lmbda: float | None = None) -> str:
    if isinstance(step, tuple):
        return (f"trained level of a variable-rate model (lambda {lmbda}): learned per-channel quantisation steps "
                f"{min(step):.3g}..{max(step):.3g}")
    if step == 1.0:
        return f"trained operating point (quality {trained_quality}), quantisation step 1"
    return (f"step-scaled, not trained: the quality-{trained_quality} checkpoint coding y with quantisation "
            f"step {step:g}")


def derive_level(source: Path, repository: Path, name: str, quality: int, step: float | tuple[float, ...],
                 version: int | None = None, *, weights_hash: bytes | None = None, lmbda: float | None = None,
                 heldout: dict | None = None) -> Path:
    """Publish `repository/name/version`: the published imagecodec version `source` served as level `quality`
    with quantisation step `step` (relative to the trained point). The graphs are hard links (copies across
    file systems) of the source's, verified against its checksums; the manifest gets the level's name,
    quality, step and hash, and the provenance says where it came from. Atomic like `publish`.
    A trained level of a variable-rate model (per-channel `step`) names its weights' hash (`weights_hash`,
    the source's own is a level's), its `lmbda` and the measured `heldout` figures."""
    from export.core import ExportError, staged_version

    manifest = Manifest.read(source)
    pre = manifest.preprocessing_as(Preprocessing)
    if manifest.family != "imagecodec":
        raise ExportError(f"{source} is a {manifest.family} version, not an imagecodec one")
    if weights_hash is None and pre.step != 1.0:
        raise ExportError(f"{source} already codes with step {pre.step}: derive levels from a step-1 version")
    base_hash = weights_hash if weights_hash is not None else pre.hash_bytes
    with staged_version(repository, name, version) as (staging, version):
        for rel in manifest.files:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source / rel, target)
            except OSError:
                shutil.copyfile(source / rel, target)
        files = checksum_files(staging)
        if files != manifest.files:
            raise ExportError(f"{source} does not match its manifest's checksums; refusing to derive from it")
        per_channel = isinstance(step, tuple)
        update = {"quality": quality, "step": list(step) if per_channel else float(step),
                  "model_hash": level_hash(base_hash, step).hex()}
        if per_channel:
            update["lmbda"] = lmbda
        derived = Preprocessing.model_validate({**pre.model_dump(by_alias=False), **update})
        provenance = {**manifest.provenance, "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
                      "derived_from": {"model": manifest.name, "version": manifest.version,
                                       "model_hash": pre.model_hash},
                      "level": _level_note(pre.quality, step if per_channel else float(step), lmbda)}
        provenance.pop("heldout", None)
        if heldout:
            provenance["heldout"] = heldout
        out = manifest.model_copy(update={"name": name, "version": version, "files": files, "provenance": provenance,
                                          "preprocessing": derived.model_dump(mode="json", by_alias=True)})
        (staging / MANIFEST_FILE).write_text(out.to_json())
    return repository / name / str(version)


def publish_levels(checkpoint: Path, repository: Path, levels: Mapping[int, float | None],
                   torchscript: bool = True) -> list[Path]:
    """The quality levels of one checkpoint as models `imagecodec-q<quality>`. {quality: step}: a one-lambda
    checkpoint at quantisation steps, the step-1 level exported (and parity-checked) once, every other level
    derived from it. {quality: None}: the trained levels of a variable-rate checkpoint (quality q = trained
    level q), the lowest exported, the others derived with their own steps, lambdas and held-out figures.
    Levels already in the repository are left as they are. Returns the versions written."""
    if any(step is None for step in levels.values()):
        return _publish_trained_levels(checkpoint, repository, sorted(levels), torchscript)
    base = [q for q, step in levels.items() if step == 1.0]
    if len(base) != 1:
        raise ValueError(f"levels {dict(levels)} need exactly one level at step 1 (the trained point)")
    written = []
    base_dir = latest_version_dir(repository / level_name(base[0]))
    if base_dir is None:
        from export.core import publish

        plan = plan_from_checkpoint(checkpoint, {"name": level_name(base[0]), "quality": str(base[0])})
        base_dir = publish(plan, repository, level_name(base[0]), torchscript=torchscript)
        written.append(base_dir)
    for quality, step in sorted(levels.items()):
        if step != 1.0 and latest_version(repository / level_name(quality)) is None:
            written.append(derive_level(base_dir, repository, level_name(quality), quality, step))
    return written


def _publish_trained_levels(checkpoint: Path, repository: Path, qualities: list[int],
                            torchscript: bool) -> list[Path]:
    from export.core import publish

    loaded = load_checkpoint(Path(checkpoint))
    model = loaded.model
    weights_hash = bytes.fromhex(state_hash(model)[:16])
    written = []
    base_dir = latest_version_dir(repository / level_name(qualities[0]))
    if base_dir is None:
        plan = plan_from_checkpoint(checkpoint, {"name": level_name(qualities[0]), "quality": str(qualities[0]),
                                                 "level": str(qualities[0])})
        base_dir = publish(plan, repository, level_name(qualities[0]), torchscript=torchscript)
        written.append(base_dir)
    for quality in qualities[1:]:
        if latest_version_dir(repository / level_name(quality)) is None:
            steps, lmbda, heldout = trained_level(loaded.extras, model, quality)
            written.append(derive_level(base_dir, repository, level_name(quality), quality, steps,
                                        weights_hash=weights_hash, lmbda=lmbda, heldout=heldout))
    return written
