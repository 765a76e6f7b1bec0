"""Triton's statistics extension: `GET /v2/models/stats`, `/v2/models/{model}[/versions/{version}]/stats`.

The figures are the batchers' plain counters (`service.batching.stats.QueueStats`), summed over the graph and
procedure queues of each loaded version, in Triton's JSON shape so that `tritonclient`'s
`get_inference_statistics()`, perf_analyzer and Triton dashboards read them unchanged. Include this router
before the OIP one: `/v2/models/stats` would otherwise be taken for a model called "stats".
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.batching.stats import PhaseStats, QueueStats
from service.dataplane.plane import version_number
from service.http.request import dataplane_of
from service.models.version import LoadedVersion

router = APIRouter(prefix="/v2/models", tags=["Open Inference Protocol v2"])


def _phases_json(phases: PhaseStats) -> dict[str, dict[str, int]]:
    return {"compute_input": phases.compute_input.as_json(), "compute_infer": phases.compute_infer.as_json(),
            "compute_output": phases.compute_output.as_json()}


def model_stats(loaded: LoadedVersion) -> dict[str, Any]:
    """One `model_stats` entry of Triton's statistics response."""
    stats: QueueStats = loaded.stats()
    no_cache = {"count": 0, "ns": 0}  # Triton's response cache; this server has none
    return {
        "name": loaded.name,
        "version": str(loaded.version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {"success": stats.success.as_json(), "fail": stats.fail.as_json(),
                            "queue": stats.queue.as_json(), **_phases_json(stats.compute),
                            "cache_hit": no_cache, "cache_miss": dict(no_cache)},
        "batch_stats": [{"batch_size": size, **_phases_json(phases)}
                        for size, phases in sorted(stats.batches.items())],
    }


def _response(request: Request, model: str | None, version: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The versions the data plane selects (as for gRPC's ModelStatistics), in Triton's JSON."""
    versions = dataplane_of(request).stats_versions(model, version_number(version))
    return {"model_stats": [model_stats(v) for v in versions]}


@router.get("/stats")
async def all_stats(request: Request) -> dict[str, list[dict[str, Any]]]:
    """Statistics of every loaded model version."""
    return _response(request, None)


@router.get("/{model}/stats")
async def model_statistics(model: str, request: Request) -> dict[str, list[dict[str, Any]]]:
    """Statistics of every loaded version of `model` (404 unknown, 503 not loaded)."""
    return _response(request, model)


@router.get("/{model}/versions/{version}/stats")
async def version_statistics(model: str, version: str, request: Request) -> dict[str, list[dict[str, Any]]]:
    """Statistics of one loaded version (404 when that version is not loaded)."""
    return _response(request, model, version)
