"""Which family serves which model and path (no Ray here): the ingress's routing table and each family
deployment's sizing, read from the model repository's manifests (the newest readable version of each model)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from families.manifest import Batching
from families.repository_layout import latest_manifest
from service.families import specs

# Task route prefixes (each family's declared `route_prefix`, its first path segment) -> family.
PREFIXES = {spec.route_prefix.strip("/"): name for name, spec in specs().items() if spec.route_prefix}
# Path prefixes of writes never re-sent to another replica when the first one died mid-request: the families'
# declared non-idempotent routes, and loading / unloading models.
NOT_RETRIED = (*(route for spec in specs().values() for route in spec.non_idempotent_routes),
               "/v2/repository/models/")
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/|$)")
_REPOSITORY_PATH = re.compile(r"^/v2/repository/models/([^/]+)/")


@dataclass
class FamilyPlan:
    """One family deployment: its models and the queue sizes of their batchers."""

    family: str
    models: list[str] = field(default_factory=list)
    max_batch_size: int = 1
    instances: int = 1
    max_queue_size: int = 1

    @property
    def max_ongoing_requests(self) -> int:
        """Requests in flight per replica: enough for every instance to fill a batch while the next one
        gathers (Ray's default of 5 would cap batches at 5)."""
        return max(16, self.max_batch_size * self.instances * 2)

    @property
    def max_queued_requests(self) -> int:
        """Requests waiting in the caller for a replica slot before Ray answers 429 (the batcher's own bound)."""
        return max(self.max_queue_size, self.max_ongoing_requests)

    @property
    def target_ongoing_requests(self) -> int:
        """Autoscaling target: one full batch per instance in flight on each replica. Above it requests wait for
        a second batch (latency grows by a batch's compute time), so Serve adds a replica; below it a replica
        runs partial batches, so Serve removes one. Half of max_ongoing_requests: a replica at its cap is
        twice over target, which Serve sees before the caller's queue (max_queued_requests) fills."""
        return self.max_batch_size * self.instances

    def autoscaling_config(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Serve's autoscaling_config for this family: the batch-sized target, delays short enough to follow a
        burst of load (Serve's defaults wait 30 s up and 600 s down), then `overrides` (min/max_replicas, ...)."""
        return {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": 10.0, "downscale_delay_s": 60.0, "metrics_interval_s": 2.0,
                "look_back_period_s": 10.0, **(overrides or {})}


def _batching(manifest: dict) -> Batching:
    """The manifest's batcher limits with the contract's defaults (families/manifest.py), or the defaults where
    the section is malformed (the replica will refuse that version itself and say why)."""
    try:
        return Batching.model_validate(manifest.get("batching") or {})
    except ValidationError:
        return Batching()


def plan_families(repository: Path) -> dict[str, FamilyPlan]:
    """{family: FamilyPlan} for every family with at least one model in the repository."""
    plans: dict[str, FamilyPlan] = {}
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} does not exist (run `make models`)")
    for model_dir in sorted(repository.iterdir()):
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        manifest = latest_manifest(model_dir)
        if manifest is None:
            continue
        plan = plans.setdefault(manifest["family"], FamilyPlan(manifest["family"]))
        plan.models.append(model_dir.name)
        batching = _batching(manifest)
        plan.max_batch_size = max(plan.max_batch_size, batching.max_batch_size)
        plan.instances = max(plan.instances, batching.instance_count)
        plan.max_queue_size = max(plan.max_queue_size, batching.max_queue_size)
    return plans


def family_of_path(path: str, model_family: dict[str, str]) -> str | None:
    """The family deployment that serves `path` (None: no family; the ingress answers or merges it)."""
    match = _MODEL_PATH.match(path) or _REPOSITORY_PATH.match(path)
    if match:
        return model_family.get(match.group(1))
    first = path.strip("/").split("/", 1)[0]
    return PREFIXES.get(first)
