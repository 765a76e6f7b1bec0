"""Synthetic METR-LA: files in exactly the real format (`metr-la.h5` + `adj_mx.pkl`) with the same structure.

- Road graph: highways as chains of sensors (~0.8-1.6 km apart) crossing at interchanges; road-network
  distances by shortest path; adjacency = Gaussian kernel exp(-(d / std(d))^2) with std over the pairs within
  8 km (the real distance list only holds nearby pairs), entries < 0.1 set to 0 (DCRNN's `gen_adj_mx.py`).
- Speeds (mph, 5-minute steps): per-sensor free-flow speed; congestion driven by a daily rhythm (weekday
  morning/evening rush hours, lighter weekend midday), per-day demand variation, and random incidents;
  congestion persists and propagates along graph edges with a lag (a diffusion step per 5 minutes).
- Sensor noise (AR(1) + white) and ~8% zeros "missing": isolated dropouts, multi-hour sensor outages and
  rare network-wide gaps, as in the real file.

    python -m training.traffic.synthetic --out data/synthetic --nodes 207 --days 35
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import shortest_path

from families.traffic.preprocessing import STEP_SECONDS

SPEED_FILE = "metr-la.h5"
ADJ_FILE = "adj_mx.pkl"
STEPS_PER_DAY = 86400 // STEP_SECONDS


def road_graph(num_nodes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sensor positions (N, 2) km, road id per sensor, and road-network distances (N, N) in km (inf = none)."""
    num_roads = max(2, int(round(num_nodes / 23)))
    sizes = np.full(num_roads, num_nodes // num_roads)
    sizes[: num_nodes % num_roads] += 1
    positions, road_of = [], []
    for road, size in enumerate(sizes):
        start = rng.uniform(0, 25, size=2)
        heading = rng.uniform(0, 2 * np.pi)
        steps = rng.uniform(0.8, 1.6, size=size)
        curve = np.cumsum(rng.normal(0, 0.15, size=size))  # gently bending road
        angles = heading + curve
        deltas = np.stack([np.cos(angles), np.sin(angles)], axis=1) * steps[:, None]
        positions.append(start + np.cumsum(deltas, axis=0) - deltas[0])
        road_of.extend([road] * size)
    pos = np.concatenate(positions)
    road_of = np.asarray(road_of)
    euclid = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    edges = np.full((num_nodes, num_nodes), np.inf)
    index = 0
    for size in sizes:  # consecutive sensors on a road
        for i in range(index, index + size - 1):
            edges[i, i + 1] = edges[i + 1, i] = euclid[i, i + 1]
        index += size
    for a in range(num_roads):  # interchanges: closest pair of sensors between two roads, when close enough
        for b in range(a + 1, num_roads):
            ia, ib = np.flatnonzero(road_of == a), np.flatnonzero(road_of == b)
            block = euclid[np.ix_(ia, ib)]
            i, j = np.unravel_index(np.argmin(block), block.shape)
            if block[i, j] < 3.0:
                edges[ia[i], ib[j]] = edges[ib[j], ia[i]] = block[i, j] + 0.2
    distances = shortest_path(np.where(np.isinf(edges), 0, edges), directed=False)
    return pos, road_of, distances


def gaussian_adjacency(distances: np.ndarray, threshold: float = 0.1, radius_km: float = 8.0) -> np.ndarray:
    # Like METR-LA's distances_la_2012.csv, only sensor pairs within a radius are listed: sigma is their std.
    listed = distances[np.isfinite(distances) & (distances <= radius_km)]
    sigma = listed.std()
    adj = np.exp(-np.square(np.where(np.isfinite(distances), distances, np.inf) / sigma))
    adj[adj < threshold] = 0.0
    return adj.astype(np.float32)


def _rush_profile(
    hours: np.ndarray, weekend: np.ndarray, day: np.ndarray, am_weight: np.ndarray, pm_weight: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Demand (S, N) from the hour of day: weekday rush hours, lighter weekend midday. Each day's rush hours
    start earlier or later and last shorter or longer, so the same slot differs from week to week."""
    num_days = int(day.max()) + 1
    shift_am, shift_pm = rng.normal(0, 0.35, num_days)[day], rng.normal(0, 0.45, num_days)[day]
    width = rng.uniform(0.75, 1.3, num_days)[day]
    bump = lambda centre, spread: np.exp(-0.5 * ((hours - centre) / spread) ** 2)  # noqa: E731
    weekday = (am_weight * bump(7.8 + shift_am, 0.9 * width)[:, None]
               + pm_weight * bump(17.4 + shift_pm, 1.2 * width)[:, None])
    weekend_demand = 0.35 * bump(13.5 + shift_pm, 2.5)[:, None] * (0.5 * (am_weight + pm_weight))
    return np.where(weekend[:, None], weekend_demand, weekday)


def generate(
    num_nodes: int = 207,
    num_days: int = 35,
    seed: int = 0,
    start: str = "2012-03-01",
    missing_fraction: float = 0.08,
) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """Speeds table (index = timestamps, columns = sensor ids), sensor ids, adjacency."""
    rng = np.random.default_rng(seed)
    _, road_of, distances = road_graph(num_nodes, rng)
    adj = gaussian_adjacency(distances)
    sensor_ids = [str(s) for s in rng.choice(np.arange(700000, 800000), size=num_nodes, replace=False)]

    steps = num_days * STEPS_PER_DAY
    index = pd.date_range(start, periods=steps, freq=f"{STEP_SECONDS}s")
    hours = np.asarray((index.hour * 60 + index.minute) / 60.0)
    weekend = np.asarray(index.day_of_week >= 5)
    day = (np.arange(steps) // STEPS_PER_DAY)

    # Per-road direction: inbound roads jam in the morning, outbound in the evening; per-sensor susceptibility.
    inbound = rng.random(road_of.max() + 1) < 0.5
    suscept = rng.uniform(0.3, 1.0, size=num_nodes)
    am = np.where(inbound[road_of], 1.0, 0.45) * suscept
    pm = np.where(inbound[road_of], 0.45, 1.0) * suscept
    demand = _rush_profile(hours, weekend, day, am, pm, rng)
    demand *= rng.uniform(0.6, 1.4, size=(num_days, 1))[day]  # busier / quieter days
    demand *= rng.uniform(0.8, 1.2, size=(num_days, num_nodes))[day]

    # Incidents: sudden local capacity drops that then spread along the graph.
    incidents = np.zeros((steps, num_nodes))
    count = rng.poisson(num_nodes * num_days / 3)
    incidents[rng.integers(0, steps, count), rng.integers(0, num_nodes, count)] = rng.uniform(0.3, 0.7, count)

    # Congestion persists (rho) and flows to neighbours (kappa) one hop per 5-minute step.
    propagation = adj / np.maximum(adj.sum(axis=1, keepdims=True), 1e-6)
    rho, kappa = 0.88, 0.35
    congestion = np.zeros((steps, num_nodes))
    c = np.zeros(num_nodes)
    for t in range(steps):
        c = rho * ((1 - kappa) * c + kappa * (propagation @ c)) + (1 - rho) * 1.6 * demand[t] + incidents[t]
        c = np.clip(c, 0.0, 1.0)
        congestion[t] = c

    free_flow = rng.uniform(58, 70, size=num_nodes)
    speed = free_flow * (1 - 0.8 * congestion**1.3)
    noise = np.zeros(num_nodes)
    for t in range(steps):  # slowly drifting sensor bias + white noise
        noise = 0.95 * noise + rng.normal(0, 0.4, num_nodes)
        speed[t] += noise
    speed += rng.normal(0, 1.0, size=speed.shape)
    speed = np.clip(speed, 3.0, 80.0)

    _apply_missing(speed, rng, missing_fraction)
    frame = pd.DataFrame(speed.astype(np.float32), index=index, columns=sensor_ids)
    return frame, sensor_ids, adj


def _apply_missing(speed: np.ndarray, rng: np.random.Generator, fraction: float) -> None:
    steps, nodes = speed.shape
    mask = np.zeros_like(speed, dtype=bool)
    # ~1/4: network-wide gaps (the real file has whole-network outages of an hour or more)
    target = fraction * speed.size
    while mask.sum() < 0.25 * target:
        t = rng.integers(0, steps - 36)
        mask[t : t + rng.integers(6, 36)] = True
    # ~1/2: multi-hour single-sensor outages
    while mask.sum() < 0.75 * target:
        t, n = rng.integers(0, steps - 144), rng.integers(0, nodes)
        mask[t : t + rng.integers(12, 144), n] = True
    # the rest: isolated dropouts
    remaining = int(target - mask.sum())
    if remaining > 0:
        flat = rng.choice(speed.size, size=remaining, replace=False)
        mask.ravel()[flat] = True
    speed[mask] = 0.0


def write(frame: pd.DataFrame, sensor_ids: list[str], adj: np.ndarray, out_dir: Path) -> tuple[Path, Path]:
    """Write `metr-la.h5` (pandas fixed format, key "df") and `adj_mx.pkl` like the published files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    speed_path, adj_path = out_dir / SPEED_FILE, out_dir / ADJ_FILE
    frame.to_hdf(speed_path, key="df", mode="w")
    with adj_path.open("wb") as handle:
        pickle.dump([sensor_ids, {s: i for i, s in enumerate(sensor_ids)}, adj], handle, protocol=2)
    return speed_path, adj_path


def generate_files(out_dir: Path, num_nodes: int = 207, num_days: int = 35, seed: int = 0) -> tuple[Path, Path]:
    frame, sensor_ids, adj = generate(num_nodes=num_nodes, num_days=num_days, seed=seed)
    return write(frame, sensor_ids, adj, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=207)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    speed_path, adj_path = generate_files(args.out, args.nodes, args.days, args.seed)
    print(f"wrote {speed_path} and {adj_path}")


if __name__ == "__main__":
    main()
