"""A graph's batch function: requests' tensors merged along axis 0, run once, outputs split back per request."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

import numpy as np

from families.manifest import GraphSpec
from service.batching.stats import ComputePhases
from service.models.validation import Tensors
from service.runtimes import Runtime


def rows_of(graph: GraphSpec) -> Callable[[Tensors], int]:
    if not graph.batchable:
        return lambda _: 1
    first = graph.inputs[0].name
    return lambda payload: int(payload[first].shape[0])


def input_bytes(payload: Tensors) -> int:
    return sum(array.nbytes for array in payload.values())


def shape_key(payload: Tensors) -> Hashable:
    return tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(payload.items()))


def tensor_batch_runner(runtime: Runtime, phases: ComputePhases) -> Callable[[list[Tensors]], list[Tensors]]:
    """Concatenate the requests, run once, split the outputs; times the three phases into `phases`."""
    def run(payloads: list[Tensors]) -> list[Tensors]:
        phases.input_s = phases.output_s = 0.0
        if len(payloads) == 1:
            return [runtime.run(payloads[0])]
        started = time.perf_counter()
        batched = {name: np.concatenate([p[name] for p in payloads]) for name in payloads[0]}
        phases.input_s = time.perf_counter() - started
        outputs = runtime.run(batched)
        started = time.perf_counter()
        first = next(iter(payloads[0]))
        bounds = np.cumsum([0] + [p[first].shape[0] for p in payloads])
        spans = zip(bounds[:-1], bounds[1:], strict=True)
        results = [{name: value[a:b] for name, value in outputs.items()} for a, b in spans]
        phases.output_s = time.perf_counter() - started
        return results

    return run


def split_rows(total: int, chunk: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering `total` rows in chunks of at most `chunk`."""
    return [(start, min(start + chunk, total)) for start in range(0, total, chunk)]
