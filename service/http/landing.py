"""The landing page at `/`: the service, each model with its versions and states, and links.

HTML for a browser, JSON when the Accept header prefers `application/json`. Everything comes from memory (the
hub's loaded versions and version states, the settings): no disk scan and no external asset, so a load
balancer may hit it as often as it likes. Model states: `ready` (served; `reason` says so when an older version
serves because the latest failed), `loading` (a version loading, or queued behind other models at start-up),
`failed` (no version loads; `reason` names each failure), `unloaded` (by the admin API).
"""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from service import __version__
from service.models.hub import ModelHub
from service.models.version import LoadedVersion, VersionState, VersionStatus

router = APIRouter()

# docker/grafana/dashboards/*.json (uid, title); tests/platform/test_pages.py keeps the two in step.
GRAFANA_DASHBOARDS = (
    ("serving-overview", "Serving: latency, traffic and errors"),
    ("serving-batching", "Serving: batching and queues"),
    ("serving-gpu", "Serving: GPU"),
    ("model-quality", "Model quality: forecast error, OOD and drift"),
    ("rollout", "Rollout: baseline vs candidate"),  # issue 31 (docs/rollouts.md)
)
QUEUED = "queued: models load one after another at start-up"
REFRESH_S = 5  # the HTML page reloads itself while something is loading


def wants_json(accept: str) -> bool:
    """True when `accept` prefers JSON to HTML (q-values; for each type the most specific range decides)."""
    best = {"text/html": (-1, 0.0), "application/json": (-1, 0.0)}  # media type -> (specificity, q)
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        for target, (specificity, _) in best.items():
            kind = target.split("/")[0]
            rank = 2 if media == target else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
            if rank > specificity:
                best[target] = (rank, q)
    # Equal q: the type named more precisely wins (`application/json, */*` asks for JSON); a full tie is HTML.
    (json_rank, json_q), (html_rank, html_q) = best["application/json"], best["text/html"]
    return json_q > 0 and (json_q, json_rank) > (html_q, html_rank)


def _state_name(state: VersionState) -> str:
    if state.state is VersionStatus.UNAVAILABLE:
        return "unloaded" if state.reason == "unloaded" else "failed"
    return state.state.value.lower()


def _runtime(loaded: LoadedVersion) -> str:
    return ", ".join(sorted({runtime.name for runtime in loaded.runtimes.values()}))


def model_entries(hub: ModelHub) -> list[dict[str, Any]]:
    """Each model the hub knows (to load, loaded or tried), with its versions, from memory."""
    loaded = {(v.name, v.version): v for v in hub.serving()}
    states = hub.version_states()
    for name, version in loaded:
        states.setdefault(name, {}).setdefault(version, VersionState(VersionStatus.READY))
    entries = []
    for name in sorted(states):
        versions = states[name]
        # A model with a loaded version is serving, so `get` answers from memory (disk only for unknown ones).
        served = hub.get(name) if any(n == name for n, _ in loaded) else None
        rows = []
        for number in sorted(versions, reverse=True):
            version = loaded.get((name, number))
            rows.append({"version": number, "state": _state_name(versions[number]), "reason": versions[number].reason,
                         "default": served is not None and number == served.version,
                         "device": version.device if version else None,
                         "runtime": _runtime(version) if version else None})
        if served is not None:
            state, reason = "ready", hub.fallback(name) or ""
        elif not rows or any(r["state"] == "loading" for r in rows):
            state, reason = "loading", "" if rows else QUEUED
        elif all(r["state"] == "unloaded" for r in rows):
            state, reason = "unloaded", "unloaded through the admin API"
        else:
            state = "failed"
            reason = "; ".join(f"v{r['version']}: {r['reason']}" for r in rows if r["state"] == "failed")
        manifest = served.manifest if served is not None else None
        entries.append({
            "name": name, "state": state, "reason": reason,
            "family": manifest.family if manifest else None, "task": manifest.task if manifest else None,
            "version": served.version if served else None, "device": served.device if served else None,
            "runtime": _runtime(served) if served else None, "versions": rows,
        })
    return entries


def page_data(request: Request) -> dict[str, Any]:
    app = request.app
    settings = app.state.settings
    hub: ModelHub | None = getattr(app.state, "hub", None)
    root = request.scope.get("root_path", "").rstrip("/")
    grafana = settings.grafana_url.rstrip("/")
    return {
        "service": {"name": app.title, "version": __version__, "ready": bool(hub and hub.ready),
                    "device": hub.device if hub else None},
        "models": model_entries(hub) if hub else [],
        "links": {
            "docs": f"{root}/docs", "redoc": f"{root}/redoc", "openapi": f"{root}/openapi.json",
            "metrics": f"{root}/metrics", "ready": f"{root}/v2/health/ready", "favicon": f"{root}/favicon.png",
            "grafana": [{"title": title, "url": f"{grafana}/d/{uid}"} for uid, title in GRAFANA_DASHBOARDS]
            if grafana else [],
        },
    }


STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1b1f24}
h1{margin-bottom:.2rem}.sub{color:#57606a;margin-top:0}
table{border-collapse:collapse;width:100%;margin:1rem 0}th,td{text-align:left;padding:.45rem .6rem;
border-bottom:1px solid #d0d7de;vertical-align:top}th{background:#f6f8fa}
.state{display:inline-block;padding:.05rem .5rem;border-radius:1rem;font-size:.85rem;font-weight:600}
.ready{background:#dafbe1;color:#116329}.loading,.unloading{background:#fff8c5;color:#7d4e00}
.failed{background:#ffebe9;color:#a40e26}.unloaded{background:#eaeef2;color:#57606a}
.reason{color:#57606a;font-size:.85rem;margin-top:.2rem;max-width:30rem;overflow-wrap:anywhere}
code{font-size:.85rem}nav a{margin-right:1.2rem}ul{padding-left:1.2rem}.nowrap{white-space:nowrap}
"""


def _badge(state: str) -> str:
    return f'<span class="state {escape(state)}">{escape(state)}</span>'


def _reason(reason: str) -> str:
    return f'<div class="reason">{escape(reason)}</div>' if reason else ""


def render_html(data: dict[str, Any]) -> str:
    service, links = data["service"], data["links"]
    rows = []
    for model in data["models"]:
        versions = model["versions"] or [{"version": None, "state": model["state"], "reason": "", "default": False,
                                          "device": None, "runtime": None}]
        what = " / ".join(escape(x) for x in (model["family"], model["task"]) if x)
        # A failed model's reason lists its versions' reasons, which their own rows show.
        reason = "" if model["state"] == "failed" else model["reason"]
        for i, v in enumerate(versions):
            head = ""
            if i == 0:
                head = (f'<td rowspan="{len(versions)}"><strong>{escape(model["name"])}</strong>'
                        f'<div class="reason">{what}</div></td>'
                        f'<td rowspan="{len(versions)}">{_badge(model["state"])}{_reason(reason)}</td>')
            number = "" if v["version"] is None else f'v{v["version"]}' + (" (default)" if v["default"] else "")
            rows.append(f'<tr data-model="{escape(model["name"])}" data-state="{escape(model["state"])}">{head}'
                        f'<td class="nowrap">{escape(number)}</td><td>{_badge(v["state"])}{_reason(v["reason"])}</td>'
                        f'<td>{escape(v["device"] or "")}</td><td><code>{escape(v["runtime"] or "")}</code></td></tr>')
    grafana = "".join(f'<li><a href="{escape(d["url"])}">{escape(d["title"])}</a></li>' for d in links["grafana"])
    loading = not service["ready"] or any(m["state"] == "loading" for m in data["models"])
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if loading else ""
    status = "ready" if service["ready"] else "not ready"
    table = ("<table><thead><tr><th>Model</th><th>State</th><th>Version</th><th>Version state</th><th>Device</th>"
             f"<th>Runtime</th></tr></thead><tbody>{''.join(rows)}</tbody></table>" if rows
             else "<p>No model in the repository.</p>")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(service["name"])}</title><link rel="icon" href="{escape(links["favicon"])}">'
        f'<style>{STYLE}</style></head>'
        f'<body><h1>{escape(service["name"])}</h1>'
        f'<p class="sub">version {escape(service["version"])} · {_badge(status)} · '
        f'device {escape(service["device"] or "-")}</p>'
        f'<nav><a href="{escape(links["docs"])}">API docs (Swagger UI)</a><a href="{escape(links["redoc"])}">ReDoc</a>'
        f'<a href="{escape(links["openapi"])}">OpenAPI</a><a href="{escape(links["metrics"])}">Metrics</a>'
        f'<a href="{escape(links["ready"])}">Readiness</a></nav>'
        f'<h2>Models</h2>{table}'
        + (f"<h2>Grafana dashboards</h2><ul>{grafana}</ul>" if grafana else "")
        + "</body></html>"
    )


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def landing(request: Request) -> Response:
    # On the event loop, not the thread pool: it only reads the hub's memory, which the loop owns.
    data = page_data(request)
    headers = {"Vary": "Accept", "Cache-Control": "no-cache"}
    if wants_json(request.headers.get("accept", "")):
        return JSONResponse(data, headers=headers)
    return HTMLResponse(render_html(data), headers=headers)
