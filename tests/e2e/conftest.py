"""Fixtures for end-to-end tests: Open WebUI's stand-in image and a headless Chromium page.

The stack tests use these: `open_webui_image` is the tag to hand a stack as OPEN_WEBUI_IMAGE, `browser_page` a page
to drive with the steps in support/browser.py. The chat page is half of the user's main job, so the stand-in is
built in every run (a cold build took 14 minutes on a two-core machine) and a failed build fails the tests that
need it; nothing here skips.
"""

from __future__ import annotations

import sys
from typing import Iterator

import pytest
from playwright.sync_api import Page

from builder.images.docker import Backend
from support.browser import chromium_page
from support.builder import RUN
from support.open_webui import OPEN_WEBUI_IMAGE, build_image


@pytest.fixture(scope="session")
def open_webui_image(backend: Backend, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Open WebUI's stand-in, built from PyPI under this run's tag (a cold build downloads about 3 GB; later ones hit
    the cache)."""
    tag = f"{OPEN_WEBUI_IMAGE}:{RUN}"
    log = tmp_path_factory.mktemp("open-webui-build") / "build.log"
    seconds = build_image(backend, base_image, tag, log=log)
    print(f"\nbuilt {tag} in {seconds:.0f} s (log: {log})", file=sys.stderr)
    return tag


@pytest.fixture
def browser_page() -> Iterator[Page]:
    with chromium_page() as page:
        yield page
