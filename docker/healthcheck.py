#!/usr/bin/env python3
"""Container health probe: GET http://127.0.0.1:$STEER_PORT<path>, exit 0 on a 2xx answer, 1 otherwise.

Installed in the images as `steer-healthcheck` and used by the Dockerfile HEALTHCHECK (`/health`,
liveness) and by compose (`/ready`). Standard library only, so the image needs no curl. Proxies are
bypassed on purpose: an HTTP(S)_PROXY set for hub downloads must not capture a loopback probe. When
STEER_API_KEY is set, it is sent as a bearer token (routes other than /health may require it).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/health"
    port = os.environ.get("STEER_PORT", "8000")
    url = f"http://127.0.0.1:{port}{path}"
    request = urllib.request.Request(url)
    api_key = os.environ.get("STEER_API_KEY")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=4.0) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # 503 from /ready while loading or draining
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    if 200 <= status < 300:
        return 0
    print(f"{url}: HTTP {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
