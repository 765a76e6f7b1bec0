"""Start and stop the service on Ray Serve (make serve-ray / make stop-ray).

    python -m deploy.ray.launch up --replicas 2 --host 127.0.0.1 --port 8000 [--config deploy/ray/serve_config.yaml]
    python -m deploy.ray.launch down

`up` joins RAY_ADDRESS when it is set, else starts a local Ray head (`ray start --head --block` in its own
process group, recorded in <state>/head.json); writes the effective config (serve_config.yaml with the
replicas, host, port and absolute paths applied, entries of families the repository lacks left out) to
<state>/serve_config.effective.yaml, submits it with `serve run --non-blocking` and waits for
/v2/health/ready. `down` shuts Serve down and stops the head only if `up` started it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from deploy.ray.topology import plan_families

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")
DEFAULT_STATE = ROOT / "state" / "ray"
APP_ARG_PATHS = ("repository", "state_dir", "metrics_dir")
AUTH_TOKEN = "auth_token"  # <state>/auth_token: the token of the head `up` starts


def effective_config(config: dict[str, Any], *, replicas: int | str | None = None, host: str | None = None,
                     port: int | None = None, repository: Path | None = None, base: Path = ROOT,
                     settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config to deploy: `config` with the overrides applied, application paths absolute (relative ones
    resolve against `base`), and `deployments` entries kept only for families the repository has (Serve
    refuses an override of a deployment the application does not build). Validated by ServeDeploySchema."""
    from ray.serve.schema import ServeDeploySchema

    out = copy.deepcopy(config)
    http = out.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    for app in out["applications"]:
        args = app.setdefault("args", {})
        if repository is not None:
            args["repository"] = str(repository)
        for key in APP_ARG_PATHS:
            if args.get(key):
                args[key] = str((base / args[key]).resolve())
        if settings:
            args["settings"] = {**(args.get("settings") or {}), **settings}
        families = set(plan_families(Path(args.get("repository", base / "model_repository"))))
        if args.get("families"):
            families &= set(args["families"])
        if replicas is not None:
            args["replicas"] = replicas if replicas == "auto" else int(replicas)
        kept = []
        for entry in app.get("deployments", []):
            if entry["name"] != "Ingress" and entry["name"] not in families:
                continue
            if replicas is not None and entry["name"] != "Ingress" and "autoscaling_config" not in entry:
                if replicas == "auto":  # the app's autoscaling (args.autoscaling, sized to the batchers) decides
                    entry.pop("num_replicas", None)
                else:
                    entry["num_replicas"] = int(replicas)
            kept.append(entry)
        app["deployments"] = kept
    ServeDeploySchema.model_validate(out)
    return out


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def ensure_auth_token(path: Path) -> Path:
    """A Ray authentication token in a file only this user can read (created once, 256 random bits as Ray's
    own `ray get-auth-token --generate`). Project-owned instead of ~/.ray/auth_token: `ray start --head` with
    RAY_AUTH_MODE=token refuses to start without a token and never creates one, and a fresh machine has none."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL + 0600: never readable by others, not even between creation and chmod; a concurrent `up`
        # that created it first wins and its token is used.
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def _env(state: Path = DEFAULT_STATE) -> dict[str, str]:
    """The nodes' environment: the repository root importable (deploy.ray is not an installed package)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not env.get("RAY_ADDRESS"):
        # The head `ray start --head` starts enables token authentication while the CLI and drivers default to
        # none: the head, our own probes, `serve run` and shutdown all use the token in <state>/auth_token
        # (RAY_AUTH_TOKEN_PATH, read by Ray's token loader before ~/.ray/auth_token) unless one is given.
        env.setdefault("RAY_AUTH_MODE", "token")
        if env["RAY_AUTH_MODE"] == "token" and not (env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH")):
            env["RAY_AUTH_TOKEN_PATH"] = str(ensure_auth_token(state / AUTH_TOKEN))
    return env


def start_head(state: Path, port: int, num_cpus: int | None) -> str:
    """A local Ray head in its own process group; its address. Recorded in <state>/head.json."""
    import ray

    address = f"{ray.util.get_node_ip_address()}:{port}"
    cmd = [_bin("ray"), "start", "--head", "--block", f"--port={port}", "--include-dashboard=false",
           "--disable-usage-stats"]
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    log = open(state / "ray-head.log", "ab")  # noqa: SIM115 - the head outlives this process
    env = _env(state)
    # `down` shuts Serve down before it stops the head, so the head's drain on SIGTERM (30 s by default) only
    # delays the stop; a few seconds are left for what else runs on it.
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "5")
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    (state / "head.json").write_text(json.dumps({"pid": head.pid, "pgid": head.pid, "address": address}))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}; see {state / 'ray-head.log'}")
        probe = subprocess.run([_bin("ray"), "status", f"--address={address}"], capture_output=True,
                               env=_env(state))
        if probe.returncode == 0:
            return address
        time.sleep(1)
    raise TimeoutError(f"the Ray head at {address} did not come up; see {state / 'ray-head.log'}")


def wait_ready(url: str, timeout: float) -> float:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}/v2/health/ready not 200 after {timeout:.0f} s")


# Run in a child (as `down`'s shutdown): the launcher itself never joins the cluster as a driver.
_WAIT_RUNNING = """
import sys, time, ray
from ray import serve
ray.init(address=sys.argv[1], namespace="serve", log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[2])
while True:
    apps = serve.status().applications
    states = {name: app.status.value for name, app in apps.items()}
    if apps and set(states.values()) == {"RUNNING"} or time.monotonic() > deadline:
        print(states)
        sys.exit(0 if apps and set(states.values()) == {"RUNNING"} else 1)
    time.sleep(1)
"""


def wait_running(address: str, state: Path, timeout: float) -> None:
    """Every replica Serve was asked for is up (the application RUNNING): /v2/health/ready is 200 as soon as each
    family has one warm replica, while the others of REPLICAS=N may still be starting."""
    probe = subprocess.run([sys.executable, "-c", _WAIT_RUNNING, address, str(timeout)], env=_env(state), cwd=ROOT,
                           capture_output=True, text=True, timeout=timeout + 120)
    if probe.returncode != 0:
        raise TimeoutError(f"Serve's applications not RUNNING after {timeout:.0f} s: {probe.stdout.strip()} "
                           f"{probe.stderr[-2000:]}")


def up(args: argparse.Namespace) -> None:
    state = Path(args.state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(Path(args.config).read_text())
    effective = effective_config(config, replicas=args.replicas, host=args.host, port=args.port,
                                 repository=Path(args.repository).resolve(), base=ROOT)
    path = state / "serve_config.effective.yaml"
    path.write_text(yaml.safe_dump(effective, sort_keys=False))
    address = os.environ.get("RAY_ADDRESS") or start_head(state, args.ray_port, args.num_cpus)
    started = time.monotonic()
    subprocess.run([_bin("serve"), "run", str(path), "--non-blocking", f"--address={address}"], check=True,
                   env=_env(state), cwd=ROOT)
    (state / "serve.json").write_text(json.dumps({"address": address}))
    http = effective["http_options"]
    host = "127.0.0.1" if http["host"] in ("0.0.0.0", "::") else http["host"]
    waited = wait_ready(f"http://{host}:{http['port']}", args.timeout)
    wait_running(address, state, max(1.0, args.timeout - (time.monotonic() - started)))
    print(f"serving on http://{host}:{http['port']} (Ray at {address}); ready {time.monotonic() - started:.1f} s "
          f"after submission ({waited:.1f} s waiting for readiness); config {path}")


def down(args: argparse.Namespace) -> None:
    state = Path(args.state).resolve()
    head_file, serve_file = state / "head.json", state / "serve.json"
    address = os.environ.get("RAY_ADDRESS")
    head = json.loads(head_file.read_text()) if head_file.exists() else None
    if serve_file.exists():
        address = json.loads(serve_file.read_text())["address"]
    if address:
        shut = subprocess.run([sys.executable, "-c", "import ray, sys; from ray import serve; "
                               "ray.init(address=sys.argv[1], namespace='serve', log_to_driver=False); "
                               "serve.shutdown()", address], env=_env(state), timeout=120)
        print(f"serve shutdown at {address}: rc {shut.returncode}")
        serve_file.unlink(missing_ok=True)
    if head is not None:
        stop_group(int(head["pgid"]))
        head_file.unlink(missing_ok=True)
        print(f"stopped the Ray head this launcher started (process group {head['pgid']})")


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the process group. Zombies count for killpg(pgid, 0) until
    whoever inherited them reaps them, yet they hold no port, memory or CPU."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: any member counts
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def stop_group(pgid: int, grace_s: float = 20.0) -> None:
    """SIGTERM the head's process group, SIGKILL what is left after `grace_s`; returns once none is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)


def _replicas(value: str) -> int | str:
    return value if value == "auto" else int(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", default=str(DEFAULT_STATE), help="head.json, logs, the effective config")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up")
    start.add_argument("--config", default=str(DEFAULT_CONFIG))
    start.add_argument("--repository", default=str(ROOT / "model_repository"))
    start.add_argument("--replicas", type=_replicas, default=None,
                       help="per family, or `auto`: the config's autoscaling (default: the config's replicas)")
    start.add_argument("--host", default=None)
    start.add_argument("--port", type=int, default=None)
    start.add_argument("--ray-port", type=int, default=6379, help="GCS port of the head this starts")
    start.add_argument("--num-cpus", type=int, default=None, help="CPUs the head offers (default: all)")
    start.add_argument("--timeout", type=float, default=600)
    commands.add_parser("down")
    args = parser.parse_args(argv)
    {"up": up, "down": down}[args.command](args)


if __name__ == "__main__":
    main()
