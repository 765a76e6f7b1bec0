"""`python -m service`: run the service with uvicorn (HOST/PORT env, defaults 127.0.0.1:8000), and gRPC on
HOST:GRPC_PORT (default 8001, 0 = off; service/grpc) in the same event loop.

Every default comes from `service.settings.Settings`; the command-line flags override them. Connection limits
(SERVICE_MAX_CONNECTIONS, ..._PER_CLIENT, SERVICE_MAX_HEADER_BYTES, SERVICE_HEADER_TIMEOUT_S) are enforced by
`service.http.protocol`.
"""

from __future__ import annotations

import argparse
import logging
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.http.protocol import ConnectionLimits, guarded_protocol
from service.settings import Settings


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(max_header_bytes=settings.max_header_bytes, header_timeout_s=settings.header_timeout_s,
                            max_connections=settings.max_connections,
                            max_connections_per_client=settings.max_connections_per_client)


class DrainingServer(uvicorn.Server):
    """uvicorn's server; SIGTERM/SIGINT also make the gRPC listener refuse new calls at once (calls in flight
    get GRACEFUL_TIMEOUT_S), as the HTTP listener does, not only once HTTP has drained and the lifespan ends."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        grpc_server = getattr(self.app.state, "grpc", None)
        if grpc_server is not None:
            grpc_server.begin_drain()


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--grpc-port", type=int, default=settings.grpc_port, help="gRPC port; 0 = HTTP only")
    parser.add_argument("--log-level", default=settings.log_level)
    parser.add_argument("--graceful-timeout", type=float, default=settings.graceful_timeout_s,
                        help="seconds to finish accepted requests after SIGTERM")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.graceful_timeout != settings.graceful_timeout_s:
        settings.graceful_timeout_s = args.graceful_timeout  # the gRPC drain reads it from the settings
    app = create_app(settings, grpc_listen=(args.host, args.grpc_port) if args.grpc_port else None)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        # Header size/timeout, per-client and global connection limits (the global one replaces uvicorn's
        # limit_concurrency, which would also refuse health probes).
        http=guarded_protocol(connection_limits(settings)),
        server_header=False,
        access_log=settings.access_log,
    )
    DrainingServer(config, app).run()


if __name__ == "__main__":
    main()
