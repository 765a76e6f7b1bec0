"""Each replica's own /metrics (its service registry on a port of its node) and a Prometheus file_sd target
for it: `<dir>/<deployment>-<replica>.json` = [{"targets": ["ip:port"], "labels": {"deployment", "replica"}}].
Prometheus reads the folder with `file_sd_configs: [{files: ["<dir>/*.json"]}]`, so every replica is its own
series and sums over replicas add up. The folder must be shared by the nodes (one machine, or a shared mount)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from threading import Thread

from prometheus_client import CollectorRegistry, start_http_server

from families.storage import atomic_write_bytes

HOST_LABEL = "__meta_ray_host"  # dropped by Prometheus after relabelling; lets a replica prune dead ones
PID_LABEL = "__meta_ray_pid"
NODE_LABEL = "__meta_ray_node_id"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_dead(folder: Path) -> list[Path]:
    """Remove targets of replicas of this host whose process is gone (SIGKILL leaves its file behind)."""
    removed = []
    host = socket.gethostname()
    for path in folder.glob("*.json"):
        try:
            labels = json.loads(path.read_text())[0]["labels"]
            if labels.get(HOST_LABEL) == host and not _alive(int(labels[PID_LABEL])):
                path.unlink(missing_ok=True)
                removed.append(path)
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return removed


class MetricsTarget:
    """The replica's metrics server and its target file (removed again by `close`)."""

    def __init__(self, registry: CollectorRegistry, folder: Path, ip: str, deployment: str, replica: str,
                 node_id: str = "") -> None:
        self.server, self._thread = start_http_server(0, addr=ip, registry=registry)
        self.address = f"{ip}:{self.server.server_port}"
        folder.mkdir(parents=True, exist_ok=True)
        prune_dead(folder)
        self.path = folder / f"{deployment}-{replica}.json".replace("/", "_")
        labels = {"deployment": deployment, "replica": replica, HOST_LABEL: socket.gethostname(),
                  PID_LABEL: str(os.getpid()), NODE_LABEL: node_id}
        atomic_write_bytes(self.path, json.dumps([{"targets": [self.address], "labels": labels}]).encode())

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        self.server.shutdown()
        if isinstance(self._thread, Thread):
            self._thread.join(timeout=5)
