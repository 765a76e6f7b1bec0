"""The /metrics page, written the way `prometheus_client.generate_latest` writes it (text format 0.0.4, same
lines in the same order) at a fraction of its cost.

`generate_latest` builds a `Sample` with a fresh label dict for every line and escapes and validates every label
name and value on every scrape: about 20 us a line, 50 ms for a page of 2,500 lines on a shared core. Here each
series' label text is formatted once, when the series is first seen, and a scrape only reads the values. The
series of prometheus_client's own Counter, Gauge and Histogram are read from their children (the library's
internals: tests/platform/test_exposition.py holds the two pages equal, so an upgrade that changes them fails
there, not in production); every other collector (GC pauses, GPU, ...) goes through its own `collect()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

_FAST_TYPES = (Counter, Gauge, Histogram)


def _help(name: str, documentation: str, kind: str) -> str:
    text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n"


def _labels(pairs: list[tuple[str, str]]) -> str:
    """`{a="x",b="y"}` in generate_latest's order (sorted by name) and escaping; empty without labels."""
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs)) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


class _Series:
    """One child of a metric: the fixed text of each of its lines, formatted once."""

    __slots__ = ("child", "prefixes")

    def __init__(self, metric: Any, child: Any, values: tuple[str, ...]) -> None:
        self.child = child
        pairs = list(zip(metric._labelnames, values, strict=True))
        name = metric._name
        if isinstance(metric, Counter):
            self.prefixes = (f"{name}_total{_labels(pairs)} ",)
        elif isinstance(metric, Gauge):
            self.prefixes = (f"{name}{_labels(pairs)} ",)
        else:
            buckets = [f"{name}_bucket{_labels([*pairs, ('le', floatToGoString(b))])} " for b in child._upper_bounds]
            self.prefixes = (*buckets, f"{name}_count{_labels(pairs)} ", f"{name}_sum{_labels(pairs)} ")

    def lines(self, out: list[str]) -> None:
        child, prefixes = self.child, self.prefixes
        if len(prefixes) == 1:
            out.append(f"{prefixes[0]}{floatToGoString(child._value.get())}\n")
            return
        total = 0.0
        for prefix, bucket in zip(prefixes, child._buckets, strict=False):
            total += bucket.get()
            out.append(f"{prefix}{floatToGoString(total)}\n")
        out.append(f"{prefixes[-2]}{floatToGoString(total)}\n")
        if child._upper_bounds[0] >= 0:
            out.append(f"{prefixes[-1]}{floatToGoString(child._sum.get())}\n")


class _MetricPage:
    """The lines of one Counter / Gauge / Histogram: its header and its series, new ones formatted as they come."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        kind = "counter" if isinstance(metric, Counter) else "gauge" if isinstance(metric, Gauge) else "histogram"
        shown = f"{metric._name}_total" if kind == "counter" else metric._name
        self.header = _help(shown, metric._documentation, kind)
        self.series: dict[tuple[str, ...], _Series] = {}

    def _children(self) -> Iterator[tuple[tuple[str, ...], Any]]:
        metric = self.metric
        if not metric._labelnames:
            yield (), metric
            return
        with metric._lock:
            children = list(metric._metrics.items())
        yield from children

    def lines(self, out: list[str]) -> None:
        out.append(self.header)
        for values, child in self._children():
            series = self.series.get(values)
            if series is None or series.child is not child:  # new, or removed and created again
                series = self.series[values] = _Series(self.metric, child, values)
            series.lines(out)


class MetricsPage:
    """`render()` = `generate_latest(registry)`, cheaper. One per registry; thread-safe as prometheus_client is
    (a scrape reads each value under its lock; a series created meanwhile shows up on the next scrape)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._pages: dict[int, _MetricPage] = {}

    def _collectors(self) -> list[Any]:
        with self.registry._lock:
            return list(self.registry._collector_to_names)

    def render(self) -> bytes:
        out: list[str] = []
        pages: dict[int, _MetricPage] = {}  # this scrape's: an unregistered collector's page goes
        for collector in self._collectors():
            if type(collector) in _FAST_TYPES:
                page = self._pages.get(id(collector))
                if page is None or page.metric is not collector:
                    page = _MetricPage(collector)
                pages[id(collector)] = page
                page.lines(out)
            else:
                out.append(generate_latest(_One(collector)).decode())
        self._pages = pages
        return "".join(out).encode()


class _One:
    """One collector as a registry, for generate_latest."""

    def __init__(self, collector: Any) -> None:
        self.collector = collector

    def collect(self) -> Any:
        return self.collector.collect()
