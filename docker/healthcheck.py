"""Container health check: exit 0 when GET /v2/health/ready answers 200, 1 otherwise.

Stdlib only, so the image needs no curl. Reads PORT (default 8000) like `python -m service`;
HEALTHCHECK_URL overrides the whole URL.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check(url: str, timeout_s: float = 4.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200, f"{url} -> {response.status}"
    except urllib.error.HTTPError as exc:  # 503 while models load
        return False, f"{url} -> {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} -> {exc}"


def main() -> int:
    port = os.environ.get("PORT", "8000")
    url = os.environ.get("HEALTHCHECK_URL", f"http://127.0.0.1:{port}/v2/health/ready")
    ok, message = check(url)
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
