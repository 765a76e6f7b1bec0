"""`python -m service`: run the service with uvicorn (HOST/PORT env, defaults 127.0.0.1:8000)."""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"))
    parser.add_argument("--graceful-timeout", type=float, default=float(os.environ.get("GRACEFUL_TIMEOUT_S", "60")),
                        help="seconds to finish accepted requests after SIGTERM")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        # Admission beyond the batchers' bounded queues: uvicorn answers 503 past this many connections.
        limit_concurrency=int(os.environ.get("SERVICE_MAX_CONNECTIONS", "2048")),
        access_log=os.environ.get("ACCESS_LOG", "0") == "1",
    )


if __name__ == "__main__":
    main()
