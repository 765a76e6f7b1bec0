"""A real Prometheus server for the tests: the project's prometheus.yml and alerts.yml, scrape targets
rewritten to the test's processes, 1 s scrape/evaluation, on 127.0.0.1, queried over its HTTP API."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml
from deploy_support import ALERTS_YML, PROMETHEUS_YML, load_yaml
from testkit import free_port, stop_process

SCRAPE_S = 1  # the test's scrape and rule evaluation interval (production: 5 s / 15 s)


def scrape_config_for_test(service_port: int, prometheus_port: int) -> dict:
    """The project's prometheus.yml with the scrape targets rewritten to this test's processes."""
    config = load_yaml(PROMETHEUS_YML)
    config["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
    config["rule_files"] = [str(ALERTS_YML)]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] == "grafana":
            continue  # no Grafana server in these tests
        target = {"inference": service_port, "prometheus": prometheus_port}[job["job_name"]]
        job.update(scrape_interval=f"{SCRAPE_S}s", scrape_timeout=f"{SCRAPE_S}s",
                   static_configs=[{"targets": [f"127.0.0.1:{target}"]}])
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


def finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


class Prometheus:
    def __init__(self, binary: str, workdir: Path, service_port: int) -> None:
        self._start(binary, workdir, lambda port: scrape_config_for_test(service_port, port))

    def _start(self, binary: str, workdir: Path, config_for: Callable[[int], dict]) -> None:
        """Run `binary` on a free port with the config `config_for(port)` (written to workdir)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(config_for(self.port)))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **params: str) -> dict:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
            try:
                if check():
                    return
            except (httpx.TransportError, AssertionError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus: {what} not after {timeout}s\n{self.log_path.read_text()[-3000:]}")

    def wait_scraped(self, timeout: float = 20.0) -> None:
        """Ready, and the inference target scraped successfully at least once."""
        self.wait_until("ready", lambda: httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200, timeout)
        self.wait_until("first scrape", lambda: any(
            s["value"][1] == "1" for s in self.query('up{job="inference"}')), timeout)

    def wait_scrape_after(self, moment: float, timeout: float = 20.0) -> None:
        """A scrape of the inference target that started more than one interval after `moment` (epoch s)."""
        self.wait_until("scrape after traffic", lambda: any(
            float(s["value"][1]) > moment + SCRAPE_S for s in self.query('timestamp(up{job="inference"})')),
            timeout)

    def stop(self) -> None:
        stop_process(self.process, timeout=20)
        self._log.close()


@contextmanager
def scraping(binary: str, workdir: Path, service_port: int) -> Iterator[Prometheus]:
    """A Prometheus that has scraped the service on `service_port` at least once; stopped after the block."""
    prometheus = Prometheus(binary, workdir, service_port)
    try:
        prometheus.wait_scraped()
        yield prometheus
    finally:
        prometheus.stop()
