"""`python -m service`: run the service with uvicorn (HOST/PORT env, defaults 127.0.0.1:8000).

Connection limits come from `service.settings.Settings` (SERVICE_MAX_CONNECTIONS, ..._PER_CLIENT,
SERVICE_MAX_HEADER_BYTES, SERVICE_HEADER_TIMEOUT_S) and are enforced by `service.http_protocol`.
"""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from service.http_protocol import ConnectionLimits, guarded_protocol
from service.settings import Settings


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(max_header_bytes=settings.max_header_bytes, header_timeout_s=settings.header_timeout_s,
                            max_connections=settings.max_connections,
                            max_connections_per_client=settings.max_connections_per_client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    parser.add_argument("--graceful-timeout", type=float, default=float(os.environ.get("GRACEFUL_TIMEOUT_S", "60")),
                        help="seconds to finish accepted requests after SIGTERM")
    args = parser.parse_args()
    settings = Settings()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        # Header size/timeout, per-client and global connection limits (the global one replaces uvicorn's
        # limit_concurrency, which would also refuse health probes).
        http=guarded_protocol(connection_limits(settings)),
        server_header=False,
        access_log=os.environ.get("ACCESS_LOG", "0") == "1",
    )


if __name__ == "__main__":
    main()
