"""The traffic `Family`: its router and the per-version preparation (manifest parsed once)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

from service.families.base import Family
from service.families.traffic.routes import STATE_KEY, TrafficSpec, build_router

if TYPE_CHECKING:
    from service.repository import LoadedVersion


class TrafficFamily(Family):
    name = "traffic"

    def router(self) -> APIRouter:
        return build_router()

    def prepare(self, version: LoadedVersion) -> None:
        # Parse the manifest once, and fail the load early if it lacks what the endpoint needs.
        spec = TrafficSpec.from_preprocessing(version.manifest.preprocessing)
        shape = version.manifest.primary.inputs[0].shape
        if shape[1:3] != [spec.input_steps, len(spec.sensor_ids)]:
            raise ValueError(f"graph input shape {shape} does not match {spec.input_steps} steps x "
                             f"{len(spec.sensor_ids)} sensors of the manifest")
        version.state[STATE_KEY] = spec
