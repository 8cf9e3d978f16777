"""The dashboard in headless Chromium at 1400 and 800 px, against the query API on real
(empty, then seeded) stores: every tab shows a clear empty state or its data, no chart text
is drawn outside its canvas, dead-letter and rejected-record partitions and offsets are the
exact numbers, and the page asks nothing of any host but the API's. Screenshots of every
tab at both widths go to test-output/."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn

from clickflow.api import pipelines
from clickflow.api.app import create_app
from clickflow.config import Settings
from clickflow.migrations import migrate_clickhouse, migrate_postgres
from clickflow.runtime.ports import free_port
from clickflow.stores.clickhouse import clickhouse_client
from tests.cdp import Browser, Page

pytestmark = pytest.mark.slow

OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
TABS = ("pageviews", "ugc", "adclicks", "telecom", "pipelines")
WIDTHS = (1400, 800)

# Records every text a chart draws, with its box in CSS pixels, before the page's scripts.
TEXT_PROBE = """
window.__texts = [];
const fillText = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (text, x, y) {
  const m = this.measureText(String(text)), a = this.textAlign, w = m.width;
  const left = a === "center" ? x - w / 2 : (a === "right" || a === "end") ? x - w : x;
  const t = this.getTransform(), r = t.a || 1;
  window.__texts.push({canvas: this.canvas.id, text: String(text), left, right: left + w,
    top: y - m.actualBoundingBoxAscent, bottom: y + m.actualBoundingBoxDescent,
    width: this.canvas.width / r, height: this.canvas.height / r});
  return fillText.apply(this, arguments);
};
"""


@pytest.fixture
def api(settings_full: Settings) -> Iterator[str]:
    migrate_clickhouse(settings_full, ["pageviews", "ugc", "adclicks"])
    migrate_postgres(settings_full, ["telecom"])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings_full), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def open_tab(page: Page, base: str, tab: str, width: int) -> None:
    page.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
    )
    page.navigate(f"{base}/?w={width}&tab={tab}#{tab}")  # a new document each time
    page.wait_for("document.getElementById('status').textContent !== 'connecting…'")
    status = page.eval("document.getElementById('status').textContent")
    assert status.startswith("updated"), f"{tab} at {width} px: {status}"


def panels(page: Page, tab: str) -> list[dict]:
    """Each chart and table of the tab: its id, whether it shows the empty state, its size."""
    return page.eval(
        f"""[...document.querySelectorAll('#{tab} canvas, #{tab} table')].map(e => ({{
          id: e.id, kind: e.tagName, empty: e.tagName === 'CANVAS' ? e.dataset.empty === '1'
            : e.classList.contains('empty'),
          text: e.tagName === 'TABLE' ? e.innerText : '',
          rows: Number(e.dataset.rows || e.dataset.points || 0),
          width: e.getBoundingClientRect().width,
          parent: e.parentElement.getBoundingClientRect().width }}))"""
    )


def check_texts_inside(page: Page, where: str) -> None:
    texts = page.eval("window.__texts")
    outside = [
        t
        for t in texts
        if t["left"] < -0.5
        or t["right"] > t["width"] + 0.5
        or t["top"] < -0.5
        or t["bottom"] > t["height"] + 0.5
    ]
    assert not outside, f"{where}: chart text outside its canvas: {outside[:5]}"


def only_the_api(page: Page, base: str) -> None:
    urls = {e["request"]["url"] for e in page.events("Network.requestWillBeSent")}
    others = {u for u in urls if not u.startswith((base, "data:", "blob:", "about:"))}
    assert not others, f"the dashboard asked other hosts: {others}"


def test_every_tab_empty_then_with_data_at_two_widths(
    api: str, browser: Browser, settings_full: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    OUTPUT.mkdir(exist_ok=True)
    page = browser.new_page()
    page.call("Page.addScriptToEvaluateOnNewDocument", {"source": TEXT_PROBE})
    # The dead letters this process remembers (other tests may have made some): none, then ours.
    letters: dict[str, list[dict]] = {}
    monkeypatch.setattr(pipelines, "recent_dead_letters", lambda: letters)
    for width in WIDTHS:
        for tab in TABS:
            open_tab(page, api, tab, width)
            shown = panels(page, tab)
            assert shown, tab
            for p in shown:
                # The pipelines tab shows this process's own metrics (other tests may
                # have run consumers here): there, data or an empty state.
                may_have_data = tab == "pipelines" and p["id"] != "pl-dlq"
                assert p["empty"] or (may_have_data and p["rows"] > 0), (
                    f"{tab}/{p['id']} at {width} px shows no empty state"
                )
                assert p["width"] >= p["parent"] * 0.9, f"{p['id']} does not fill its panel"
                if p["kind"] == "TABLE" and p["empty"]:
                    assert p["text"].strip().lower().startswith("no "), p
            check_texts_inside(page, f"{tab} at {width} px (empty)")
            page.screenshot(OUTPUT / f"dashboard-empty-{tab}-{width}.png", width, 1000)

    # Data: page views for the last minutes, a rejected record and dead letters with
    # offsets that a short form would round.
    now = datetime.now(UTC).replace(microsecond=0)
    ch = clickhouse_client(settings_full)
    columns = ["event_time", "page_id", "user_id", "duration_ms", "user_agent"]
    columns += ["ip_address", "region", "is_bounce", "event_id", "kafka_offset"]
    columns += ["kafka_partition"]
    views = [
        [now - timedelta(minutes=m, seconds=i), f"/movie/{i % 7}", f"u{i}", 1000 + i, "ua"]
        + ["::1", "eu", i % 3 == 0, f"e{m}-{i}", 1000 * m + i, i % 4]
        for m in range(1, 12)
        for i in range(5 + m * 3)
    ]
    ch.insert("page_views_raw", views, column_names=columns)
    ch.insert(
        "processing_errors",
        [[now, "{", "malformed JSON", 2345678, 7]],
        column_names=["error_time", "raw_message", "error_reason"]
        + ["kafka_offset", "kafka_partition"],
    )
    letters["ugc"] = [
        {
            "time": time.time(),
            "reason": "unknown event kind",
            "topic": "ugc.events",
            "partition": 11,
            "offset": 1234567,
        }
    ]
    for width in WIDTHS:
        page.call("Runtime.evaluate", {"expression": "window.__texts = []"})
        open_tab(page, api, "pageviews", width)
        page.wait_for("Number(document.getElementById('pv-chart').dataset.points) > 5")
        shown = {p["id"]: p for p in panels(page, "pageviews")}
        assert not any(p["empty"] for p in shown.values()), shown
        errors = shown["pv-errors"]["text"]
        assert "2345678" in errors and "\t7\t" in errors + "\t", errors
        check_texts_inside(page, f"pageviews at {width} px")
        page.screenshot(OUTPUT / f"dashboard-pageviews-{width}.png", width, 1000)

        open_tab(page, api, "pipelines", width)
        dlq = panels(page, "pipelines")
        dead = next(p for p in dlq if p["id"] == "pl-dlq")
        assert not dead["empty"] and "1234567" in dead["text"] and "1.2M" not in dead["text"]
        assert "\t11\t" in dead["text"]
        page.screenshot(OUTPUT / f"dashboard-pipelines-{width}.png", width, 1000)
    only_the_api(page, api)
