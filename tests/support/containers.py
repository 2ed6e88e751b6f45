"""Waiting on containers the tests start with python-on-whales."""

from __future__ import annotations

import time

from python_on_whales import Container


def wait_until_container_healthy(container: Container, timeout: float = 120) -> None:
    """Poll the image's own HEALTHCHECK: the engine's port is not published, so the host cannot ask it."""
    deadline = time.monotonic() + timeout
    container.reload()
    while container.state.health is None or container.state.health.status != "healthy":
        assert container.state.running, f"{container.name} exited: {container.state}"
        assert time.monotonic() < deadline, f"{container.name} not healthy after {timeout}s: {container.state.health}"
        time.sleep(1)
        container.reload()
