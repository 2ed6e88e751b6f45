"""Small HTTP helpers for talking to servers the tests start."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


# Containers publish on ("127.0.0.1:", PORT): Docker picks a free host port at bind time. A port picked free here and
# bound later by Docker can be taken in between by anything else on a shared machine.
LOOPBACK_ANY_PORT = "127.0.0.1:"


def published_url(container: Any, port: int = 8080) -> str:
    """http://127.0.0.1:<host port> that Docker published `port` of a python-on-whales container on."""
    container.reload()
    return f"http://127.0.0.1:{container.network_settings.ports[f'{port}/tcp'][0]['HostPort']}"


def status(url: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def wait_until_healthy(url: str, timeout: float = 120) -> None:
    """Poll `url` until it answers 200 (llama-server's /health answers 503 while loading)."""
    deadline = time.monotonic() + timeout
    last = 0
    while time.monotonic() < deadline:
        last = status(url)
        if last == 200:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout}s (last status {last})")


def post_json(url: str, body: dict[str, Any], token: str | None = None, timeout: float = 120) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())
