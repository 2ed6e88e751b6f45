"""Open WebUI driven in a real browser: Debian's Chromium, headless, through Playwright for Python.

Playwright's own browser download (`playwright install`) is never used: the suite runs the distribution's
`chromium` (tests/host-setup.sh installs it). The steps below read like what a user does on a fresh Open WebUI:
create the admin account, pick a model, ask, read the answer. Selectors are the ids and accessible names that
Open WebUI 0.12's own components set (src/routes/auth/+page.svelte, lib/components/chat/...).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from playwright.sync_api import Locator, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# No sandbox (the suite runs as root); no GPU; and nothing that phones home: without the networking flags
# Chromium stalls on connections that this network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Open WebUI's first page load compiles its whole front end in the browser: generous on two cores.
PAGE_TIMEOUT_MS = 60_000
ANSWER_TIMEOUT_MS = 180_000


@contextmanager
def chromium_page(width: int = 1280, height: int = 860) -> Iterator[Page]:
    """A page in a fresh headless Chromium (Playwright gives it a throw-away profile), closed on exit."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": width, "height": height}).new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            dismiss_whats_new_when_it_shows(page)
            yield page
        finally:
            browser.close()


def dismiss_whats_new_when_it_shows(page: Page) -> None:
    """Open WebUI greets a new account with a "What's New" dialog at a moment of its choosing; Playwright closes
    it whenever it covers the element the next step acts on."""
    page.add_locator_handler(page.get_by_role("button", name="Okay, Let's Go!"), lambda button: button.click())


def sign_up_admin(page: Page, url: str, name: str, email: str, password: str) -> None:
    """Create the first account, which Open WebUI makes the admin, and land signed in on the chat page."""
    page.goto(f"{url}/auth")
    # With no account yet, the auth page first shows an onboarding splash with a "Get started" button.
    get_started = page.get_by_role("button", name="Get started")
    name_field = page.locator("input#name")
    expect(get_started.or_(name_field).first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    if get_started.is_visible():
        get_started.click()
    name_field.fill(name)
    page.locator("input#email").fill(email)
    page.locator("input#password").fill(password)
    confirm = page.locator("input#confirm-password")
    if confirm.count():  # shown only where the admin turned ENABLE_SIGNUP_PASSWORD_CONFIRMATION on
        confirm.fill(password)
    page.get_by_role("button", name="Create Admin Account").click()
    expect(chat_input(page)).to_be_visible(timeout=PAGE_TIMEOUT_MS)


def chat_input(page: Page) -> Locator:
    return page.locator("#chat-input")


def choose_model(page: Page, model_id: str) -> None:
    """Pick `model_id` in the model selector (inside the chat input box since Open WebUI 0.12)."""
    page.locator('button[id^="model-selector-"][id$="-button"]').first.click()
    page.locator("#model-search-input").fill(model_id)
    page.locator(f'[role="option"][data-value="{model_id}"]').click()
    expect(page.locator('button[id^="model-selector-"][id$="-button"]').first).to_contain_text(model_id)


def send_prompt(page: Page, text: str) -> None:
    """Type `text` into the chat input (a rich-text editor, not a textarea) and send it."""
    chat_input(page).click()
    page.keyboard.type(text)
    expect(chat_input(page)).to_contain_text(text)
    page.locator("#send-message-button").click()


def last_answer(page: Page) -> Locator:
    """The newest assistant message: its outer element (id message-<uuid>) holds the model's name, the text and
    the action buttons."""
    return page.locator('div[id^="message-"]').filter(has=page.locator(".chat-assistant")).last


def wait_for_message_done(page: Page, timeout_ms: int = ANSWER_TIMEOUT_MS) -> Locator:
    """Wait until the newest assistant message is finished and return it: Open WebUI shows a message's Copy button
    once the message is done, answer or error alike."""
    message = last_answer(page)
    expect(message.get_by_role("button", name="Copy")).to_be_visible(timeout=timeout_ms)
    return message


def wait_for_answer(page: Page, timeout_ms: int = ANSWER_TIMEOUT_MS) -> str:
    """Wait until the model has finished answering and return the answer's text as shown.

    The model's text is rendered as markdown, an error (no model, engine down) as a plain note in the same place."""
    message = wait_for_message_done(page, timeout_ms)
    content = message.locator("#response-content-container")
    text = content.locator(".markdown-prose")
    if not text.count():
        raise AssertionError(f"Open WebUI shows no answer from the model: {content.inner_text()!r}")
    return text.first.inner_text()


def reasoning_block(message: Locator) -> Locator:
    """Open WebUI's reasoning block in a message: a toggle button reading "Thought for N seconds" once the thinking
    is done ("Thinking..." while it streams), and under it, once opened, the thinking as markdown."""
    toggle = message.locator("#response-content-container button[aria-expanded]").filter(has_text=re.compile(r"^\s*(Thought for|Thinking)"))
    return toggle.locator("xpath=..")


def open_reasoning(block: Locator) -> None:
    """Unfold a reasoning block (folded by default) and wait for the thinking to show."""
    toggle = block.locator("button[aria-expanded]").first
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
    expect(block.locator(".markdown-prose").first).to_be_visible()


def answer_text(message: Locator) -> str:
    """The message's text as shown outside its reasoning blocks: what reads as the answer."""
    return message.locator("#response-content-container").evaluate(
        "el => { const c = el.cloneNode(true); c.querySelectorAll('button[aria-expanded]').forEach(b => b.parentElement.remove()); return c.textContent; }")


def answering_model(page: Page) -> str:
    """The model name shown above the newest answer."""
    return last_answer(page).locator("#response-message-model-name").inner_text().strip()


def screenshot(page: Page, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path

