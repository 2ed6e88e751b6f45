"""Fixtures for end-to-end tests: Open WebUI's stand-in image and a headless Chromium page.

The stack tests reuse these: `open_webui_image` is the tag to hand a stack as OPEN_WEBUI_IMAGE, `browser_page`
a page to drive with the steps in support/browser.py.

Tests marked `browser` are opt-in: a cold build of the Open WebUI image alone took 14 minutes on a two-core
machine, too much for .ci/run's budget. `bash tests/run` leaves them out; any -m expression decides for
itself (`bash tests/run -m browser` runs just them).
"""

from __future__ import annotations

import sys
from typing import Iterator

import pytest
from playwright.sync_api import Page

from builder.docker import Backend
from support.browser import chromium_page
from support.open_webui import OPEN_WEBUI_IMAGE, build_image


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.markexpr:
        return
    opted_out = [item for item in items if item.get_closest_marker("browser")]
    if opted_out:
        config.hook.pytest_deselected(items=opted_out)
        items[:] = [item for item in items if not item.get_closest_marker("browser")]


@pytest.fixture(scope="session")
def open_webui_image(backend: Backend, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """r1kit-test/open-webui:test, built from PyPI (a cold build downloads about 3 GB; later ones hit the cache)."""
    log = tmp_path_factory.mktemp("open-webui-build") / "build.log"
    seconds = build_image(backend, base_image, OPEN_WEBUI_IMAGE, log=log)
    print(f"\nbuilt {OPEN_WEBUI_IMAGE} in {seconds:.0f} s (log: {log})", file=sys.stderr)
    return OPEN_WEBUI_IMAGE


@pytest.fixture
def browser_page() -> Iterator[Page]:
    with chromium_page() as page:
        yield page
