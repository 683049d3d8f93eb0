"""With API keys on: the console checks none itself, forwards the one the user typed (held in
the tab's session storage only), and shows the API's refusal with its code until then."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shared.http.auth import create_key
from tests.integration.console.support import MODEL, Suite, screenshot
from tests.integration.suite import SuiteEnv, start_api

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def guarded(suite: Suite) -> Iterator[tuple[str, str, str]]:
    """A finetune API that checks keys (same store) and a console in front of it."""
    key, entry = create_key("console-user", ["train", "admin"])
    camera_key, camera = create_key("camera-7", ["inspect"])
    tmp = suite.tmp / "keys"
    tmp.mkdir(exist_ok=True)
    senv = SuiteEnv(
        dict(suite.senv.env, AUTH_API_KEYS=json.dumps([entry, camera])), suite.senv.settings
    )
    finetune, finetune_url = start_api(senv, tmp, "finetune")
    senv.env["CONSOLE_FINETUNE_URL"] = finetune_url
    console, console_url = start_api(senv, tmp, "console")
    try:
        yield console_url, key, camera_key
    finally:
        console.stop()
        finetune.stop()


def test_the_typed_key_reaches_the_api_and_stays_in_the_tab(
    guarded: tuple[str, str, str], page: Any
) -> None:
    # given a console whose API checks keys, and no key typed yet
    console, key, _ = guarded
    page.goto(f"{console}/models")
    refused = page.wait_for_selector("#models-error .error")
    assert refused.get_attribute("data-code") == "unauthorized"
    # when the user types a key
    page.fill("#api-key", key)
    page.click("#key-form button[type='submit']")
    # then the registry shows, and the key lives in this tab's session storage only
    page.wait_for_selector(f"#model-table tr[data-model='{MODEL}']")
    assert page.locator("#models-error .error").count() == 0
    assert page.evaluate("sessionStorage.getItem('agssp.apiKey')") == key
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    screenshot(page, "console-models-with-key")


def test_a_key_without_the_scope_is_refused_with_its_code(
    guarded: tuple[str, str, str], page: Any
) -> None:
    # given a camera key (scope inspect) and the registry page (scope train)
    console, _, camera_key = guarded
    page.goto(f"{console}/models")
    page.wait_for_selector("#models-error .error[data-code='unauthorized']")
    # when the user types it
    page.fill("#api-key", camera_key)
    page.click("#key-form button[type='submit']")
    # then the API's 403 and its reason are shown
    refused = page.wait_for_selector("#models-error .error[data-code='forbidden']")
    assert "lacks scope 'train'" in refused.inner_text()
    assert page.locator("#model-table tbody tr").count() == 0
