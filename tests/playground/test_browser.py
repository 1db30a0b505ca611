"""End to end in headless Chromium against the real server: catalog, compare (streamed), sweep, errors, details."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

VECTOR = "culture/yapo-land"


def pick(page: Any, name: str, strength: float | None = None) -> Any:
    """Tick a vector in the catalog; optionally type its strength. Returns the picked row."""
    page.locator(f'#catalog .entry[data-name="{name}"] input[type=checkbox]').check()
    row = page.locator(f'#selected .picked[data-name="{name}"]')
    if strength is not None:
        row.get_by_label(f"Strength of {name}, exact value").fill(str(strength))
    return row


def wait_done(page: Any) -> None:
    page.wait_for_function("() => !document.getElementById('generate').disabled", timeout=30_000)


def test_without_key_the_page_says_so_next_to_the_key_field(page: Any) -> None:
    error = page.locator("#api-key-error")
    error.wait_for()
    assert "401" in error.inner_text() and "API key" in error.inner_text()
    assert page.get_by_label("API key").get_attribute("aria-invalid") == "true"


def test_catalog_lists_and_filters_vectors(ready_page: Any) -> None:
    page = ready_page
    entries = page.locator("#catalog .entry")
    # served vectors first, baselines after (the server lists by name, which would put baselines/ first)
    names = [e.get_attribute("data-name") for e in entries.all()]
    assert names == ["culture/bipo-land", VECTOR, "baselines/caa-land"]
    yapo = page.locator(f'#catalog .entry[data-name="{VECTOR}"]')
    meta = yapo.locator(".meta").inner_text()
    assert "layer 2" in meta and "-30 to 30" in meta
    page.get_by_label("Search by name or namespace").fill("culture")
    assert entries.count() == 2
    page.get_by_label("Search by name or namespace").fill("caa")
    assert [e.get_attribute("data-name") for e in entries.all()] == ["baselines/caa-land"]


def test_catalog_cards_show_a_headline_and_a_sweep_chart(ready_page: Any) -> None:
    """Each card: method, default strength, accuracy and retention there against unsteered, and the sweep."""
    page = ready_page
    card = page.locator(f'#catalog .entry[data-name="{VECTOR}"]')
    # kit_catalog's SWEEP_EVAL at the default strength 20: accuracy 0.64 (unsteered 0.31), retention 0.86 (0.9)
    assert card.locator(".headline").inner_text() == (
        "yapo · default strength 20 · accuracy 64 % (+33 pts vs unsteered)"
        " · retention 86 % (−4 pts vs unsteered)"
    )
    chart = card.get_by_role("img", name=f"Accuracy and retention of {VECTOR} by strength")
    assert chart.count() == 1
    assert chart.locator("path.series").count() == 2  # accuracy, retention
    assert [li.inner_text() for li in card.locator(".legend li").all()] == ["accuracy", "retention"]
    assert chart.locator("line.mark title").text_content() == "default strength 20"
    # BASELINE_EVAL has no unsteered numbers: the strength-0 point stands in for them.
    baseline = page.locator('#catalog .entry[data-name="baselines/caa-land"]')
    assert baseline.locator(".headline").inner_text() == (
        "caa · default strength 5 · accuracy 40 % (+10 pts vs unsteered) · retention 88 % (−2 pts vs unsteered)"
    )
    bipo = page.locator('#catalog .entry[data-name="culture/bipo-land"]')
    assert bipo.locator(".headline").inner_text() == "bipo · default strength 1 · not evaluated"
    assert bipo.locator(".sweep-card svg").count() == 0


def test_generate_streams_steered_beside_unsteered(ready_page: Any, api: Any) -> None:
    page = ready_page
    row = pick(page, VECTOR)
    slider = row.get_by_label(f"Strength of {VECTOR} (-30 to 30)")
    assert (slider.get_attribute("min"), slider.get_attribute("max")) == ("-30", "30")
    row.get_by_label(f"Strength of {VECTOR}, exact value").fill("25")
    page.get_by_role("button", name="Generate").click()
    # Streaming: both columns fill in token by token, before the server says it is done.
    page.wait_for_function(
        "() => document.getElementById('steered-text').textContent.length > 0"
        " && document.getElementById('unsteered-text').textContent.length > 0"
        " && document.getElementById('run-status').textContent.startsWith('Generating')"
    )
    wait_done(page)
    steered = page.locator("#steered-text").inner_text()
    unsteered = page.locator("#unsteered-text").inner_text()
    assert steered and unsteered and steered != unsteered
    assert f"{VECTOR} × 25" in page.locator("#steer-summary").inner_text()
    body = {"prompt": "At a wedding we", "max_new_tokens": 24, "steer": {VECTOR: 25}, "compare": True}
    direct = api.post("/generate", json=body).json()
    assert (steered, unsteered) == (direct["text"], direct["unsteered_text"])


def test_chat_messages(ready_page: Any) -> None:
    page = ready_page
    page.get_by_label("Chat messages").check()
    page.get_by_label("Content of message 1").fill("Hello, how are you?")
    pick(page, "culture/bipo-land", 15)
    page.get_by_role("button", name="Generate").click()
    wait_done(page)
    assert page.locator("#run-status").inner_text().startswith("Done")
    assert page.locator("#steered-text").inner_text() != page.locator("#unsteered-text").inner_text()


def test_strength_sweep_lays_outputs_out_in_a_row(ready_page: Any, api: Any) -> None:
    page = ready_page
    pick(page, VECTOR)
    page.get_by_label("Strength sweep").check()
    assert page.get_by_label("Sweep vector").input_value() == VECTOR
    assert page.get_by_label("Strengths").input_value() == "-30, -15, 0, 15, 30"
    page.get_by_role("button", name="Generate").click()
    wait_done(page)
    columns = page.locator("#sweep-out .out")
    assert columns.count() == 5
    heads = [c.locator("h3").inner_text() for c in columns.all()]
    assert heads == [f"{VECTOR} × {s}" for s in (-30, -15, 0, 15, 30)]
    texts = [c.locator("pre").inner_text() for c in columns.all()]
    assert all(texts) and len(set(texts)) >= 3
    plain = api.post("/generate", json={"prompt": "At a wedding we", "max_new_tokens": 24}).json()["text"]
    assert texts[2] == plain  # strength 0 is exactly the unsteered text
    assert "5 of 5 succeeded" in page.locator("#run-status").inner_text()


def test_bad_strength_error_next_to_its_field(ready_page: Any) -> None:
    page = ready_page
    row = pick(page, VECTOR, 99)
    page.get_by_role("button", name="Generate").click()
    error = row.locator(".field-error")
    error.wait_for()
    assert "422" in error.inner_text() and "outside its strength_range" in error.inner_text()
    assert row.get_by_label(f"Strength of {VECTOR}, exact value").get_attribute("aria-invalid") == "true"
    assert page.locator("#form-error").inner_text() == ""
    # Another field the server names: max_new_tokens above the server's cap (64).
    row.get_by_label(f"Strength of {VECTOR}, exact value").fill("5")
    page.get_by_label("Max new tokens").fill("500")
    page.get_by_role("button", name="Generate").click()
    page.locator("#max-new-tokens-error").wait_for()
    assert "max_new_tokens" in page.locator("#max-new-tokens-error").inner_text()
    assert error.inner_text() == ""
    # In the sweep, an out-of-range strength is reported next to the strengths field.
    page.get_by_label("Max new tokens").fill("8")
    page.get_by_label("Strength sweep").check()
    page.get_by_label("Strengths").fill("0, 45")
    page.get_by_role("button", name="Generate").click()
    page.locator("#sweep-error").wait_for()
    assert "outside its strength_range" in page.locator("#sweep-error").inner_text()


def test_vector_detail_view(ready_page: Any) -> None:
    page = ready_page
    page.get_by_role("button", name=f"Details of {VECTOR}").click()
    detail = page.locator("#detail")
    detail.locator(".features").wait_for()
    assert detail.locator("#detail-title").inner_text() == VECTOR
    assert detail.locator(".features tbody tr").count() == 6  # all non-zeros of the vector
    assert detail.get_by_role("img", name=f"Strength sweep of {VECTOR}").count() == 1
    assert "heldout_accuracy" in detail.locator(".legend").first.inner_text()
    assert detail.get_by_role("img", name=f"Training loss of {VECTOR}").count() == 1
    # the numbers table of the chart: losses at the logged steps
    assert "50: 0.5, 100: 0.2, 150: 0.1, 200: 0.08" in detail.text_content()
    assert "final_loss" in detail.inner_text()
    page.get_by_role("button", name="Details of baselines/caa-land").click()
    page.get_by_text("Not an SAE-space vector").wait_for()
    assert "No loss curve: mean-difference methods are estimated" in detail.inner_text()
    assert detail.get_by_role("img", name="Training loss of baselines/caa-land").count() == 0


def test_narrow_screen_and_screenshot(ready_page: Any, tmp_path: Path) -> None:
    """One column at phone width, no sideways scrolling; the wide view is what docs/playground.png shows."""
    page = ready_page
    pick(page, VECTOR, 25)
    page.get_by_role("button", name="Generate").click()
    wait_done(page)
    page.get_by_role("button", name=f"Details of {VECTOR}").click()
    page.locator("#detail .features").wait_for()
    out = Path(os.environ.get("STEER_PLAYGROUND_SCREENSHOT") or tmp_path / "playground.png")
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000
    page.set_viewport_size({"width": 360, "height": 800})
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow}px of sideways scrolling at 360px wide"


def test_busy_server_message(ready_page: Any) -> None:
    """A 429 (queue full) is shown as a readable message with the Retry-After wait (response stubbed)."""
    page = ready_page
    body = '{"error": {"message": "queue is full (64 waiting)", "type": "overloaded", "param": null, "code": 429}}'
    page.route(
        "**/generate",
        lambda route: route.fulfill(
            status=429, body=body, content_type="application/json", headers={"Retry-After": "3"}
        ),
    )
    page.get_by_role("button", name="Generate").click()
    page.locator("#form-error").wait_for()
    text = page.locator("#form-error").inner_text()
    assert "busy (429)" in text and "queue is full" in text and "Retry in 3 s" in text
