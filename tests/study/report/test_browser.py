"""The report in a real browser: headless Chromium, offline, every plotly graph drawn, no script error.

Chromium runs with its proxy pointed at a dead port, so any fetch from the network fails (and the page's
error hook records it in ``data-script-errors``), and its NetLog lists every request the page made, which
must be none. ``--dump-dom`` after a virtual-time budget gives the DOM after plotting; the report itself
writes ``data-plots-expected`` / ``data-plots-rendered`` on ``<body>``. Screenshots are saved under the
test's tmp_path (the path is printed).
"""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from study.report import write_report
from study.report.html import ERROR_CAPTURE_JS, MISSING, SORT_JS, table
from tests.study.helpers import CATEGORIES, REPO_ROOT, RUN
from tests.study.report.fixtures import external_references, grid_study, search_study

CHROMIUM = Path("/usr/bin/chromium")
# What a headless, offline, first-run-free Chromium needs; the proxy makes every network fetch fail.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0")
VIRTUAL_TIME_BUDGET_MS = 15000
CHROMIUM_TIMEOUT_S = 240
WINDOW_SIZE = "1400,4000"
# Chromium's console lines that mean the page broke or tried the network.
CONSOLE_FAILURES = ("Uncaught", "net::ERR_", "Failed to load resource")
# Elements HTML serialises without an end tag.
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="/usr/bin/chromium is missing: install Debian's package (apt-get install -y chromium); CI installs it",
)


def run_chromium(target: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", *extra, target.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)


class RenderedDom(HTMLParser):
    """Reads the dumped DOM: the marker attributes, and for each plotly graph whether it holds an svg.main-svg."""

    def __init__(self) -> None:
        super().__init__()
        self.root_attrs: dict[str, str | None] = {}
        self.body_attrs: dict[str, str | None] = {}
        self.plots: list[bool] = []  # one per .js-plotly-plot: has an svg.main-svg inside
        self._stack: list[tuple[str, int | None]] = []  # (tag, index of the plot it opens)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        classes = (values.get("class") or "").split()
        if tag == "html":
            self.root_attrs = values
        elif tag == "body":
            self.body_attrs = values
        if tag == "svg" and "main-svg" in classes:
            for _, plot in self._stack:
                if plot is not None:
                    self.plots[plot] = True
        opened = None
        if "js-plotly-plot" in classes:
            self.plots.append(False)
            opened = len(self.plots) - 1
        if tag not in VOID_TAGS:
            self._stack.append((tag, opened))

    def handle_endtag(self, tag: str) -> None:
        for position in range(len(self._stack) - 1, -1, -1):
            if self._stack[position][0] == tag:
                del self._stack[position:]
                return


def page_network_requests(net_log: Path) -> list[str]:
    """http(s) URLs the page itself asked for, from Chromium's NetLog.

    Requests of the page carry its site (``file://``) in their network isolation key; Chromium's own
    background requests (update checks and the like, which the dead proxy fails anyway) do not.
    """
    text = net_log.read_text(encoding="utf-8")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short at exit lacks its closing brackets
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        url = str(params.get("url", ""))
        if (event.get("type") == start_job and url.startswith(("http:", "https:"))
                and str(params.get("network_isolation_key", "")).startswith("file://")):
            urls.append(url)
    return urls


def rendered(html_path: Path, tmp_path: Path) -> tuple[RenderedDom, str, list[str]]:
    """The DOM after plotting, Chromium's log, and the network requests the page made."""
    net_log = tmp_path / f"netlog-{html_path.stem}.json"
    done = run_chromium(html_path, tmp_path, "--dump-dom", f"--log-net-log={net_log}")
    assert done.returncode == 0, done.stderr[-3000:]
    dom = RenderedDom()
    dom.feed(done.stdout)
    return dom, done.stderr, page_network_requests(net_log)


def assert_renders_offline(html_path: Path, tmp_path: Path, screenshot_name: str) -> Path:
    """Every plotly graph drawn, no script error or network attempt, and a screenshot written."""
    source = html_path.read_text(encoding="utf-8")
    assert external_references(source) == [], "the report references the network"
    expected = source.count('class="plot-data"')
    assert expected > 0
    dom, stderr, requests = rendered(html_path, tmp_path)
    assert requests == [], "the report asked the network for these"
    assert "data-script-errors" not in dom.root_attrs, dom.root_attrs.get("data-script-errors")
    failures = [line for line in stderr.splitlines() if "CONSOLE" in line and any(f in line for f in CONSOLE_FAILURES)]
    assert failures == []
    assert dom.body_attrs.get("data-plots-expected") == str(expected)
    assert dom.body_attrs.get("data-plots-rendered") == str(expected)
    assert len(dom.plots) == expected and all(dom.plots), dom.plots
    shot = tmp_path / screenshot_name
    done = run_chromium(html_path, tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW_SIZE}")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-3000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 1.0, "the screenshot is blank"
    print(f"screenshot: {shot}")
    return shot


def test_the_network_guard_catches_remote_resources(tmp_path):
    """Control: a remote image is caught by the scan, the page's error hook and the NetLog; a script's
    fetch (which no scan of the HTML sees) by the NetLog."""
    page = tmp_path / "remote.html"
    page.write_text(f"<!DOCTYPE html><html><head><script>{ERROR_CAPTURE_JS}</script></head>"
                    "<body><img src=\"http://example.invalid/pixel.png\">"
                    "<script>fetch('https://example.invalid/data.json').catch(function () {});</script>"
                    "</body></html>", encoding="utf-8")
    assert external_references(page.read_text(encoding="utf-8")) == ["<img src=http://example.invalid/pixel.png>"]
    dom, _, requests = rendered(page, tmp_path)
    errors = json.loads(dom.root_attrs.get("data-script-errors") or "[]")
    assert any("failed to load http://example.invalid/pixel.png" in e for e in errors), errors
    assert set(requests) == {"http://example.invalid/pixel.png", "https://example.invalid/data.json"}


def test_table_sorter_sorts_numbers_keeps_missing_and_mean_last(tmp_path):
    frame = pd.DataFrame({"category": ["b", "a", "c", "d", "Mean"], "value": [10.5, 9.2, float("nan"), 100.0, 40.0]})
    clicks = """
      var header = document.querySelectorAll("thead th")[1];
      function order() {
        return Array.prototype.map.call(document.querySelectorAll("tbody tr"), function (r) {
          return r.cells[0].textContent; }).join(",");
      }
      header.click(); document.body.setAttribute("data-ascending", order());
      header.click(); document.body.setAttribute("data-descending", order());
    """
    page = tmp_path / "sorter.html"
    page.write_text(f"<!DOCTYPE html><html><head><script>{ERROR_CAPTURE_JS}</script></head><body>"
                    f"{table(frame, pinned_last=1)}<script>{SORT_JS % {'missing': MISSING}}</script>"
                    f"<script>{clicks}</script></body></html>", encoding="utf-8")
    dom, _, _ = rendered(page, tmp_path)
    assert "data-script-errors" not in dom.root_attrs, dom.root_attrs.get("data-script-errors")
    assert dom.body_attrs.get("data-ascending") == "a,b,d,c,Mean"
    assert dom.body_attrs.get("data-descending") == "d,b,a,c,Mean"


def test_report_renders_offline_in_chromium(tmp_path):
    report = write_report(grid_study(tmp_path))
    assert_renders_offline(report, tmp_path, "report.png")


def test_comparison_report_renders_offline_in_chromium(tmp_path):
    report = write_report(grid_study(tmp_path), [search_study(tmp_path)])
    assert_renders_offline(report, tmp_path, "comparison.png")


# The real study: a grid of two tiny trials (the tiny model of tests/conftest.py) on the tiny data set.
REAL_STUDY_NAME = "report-browser-real"
REAL_STUDY_TIMEOUT_S = 1800


@pytest.mark.timeout(REAL_STUDY_TIMEOUT_S)
def test_real_tiny_study_report_renders_offline(tmp_path, tiny_data, tiny_config, child_env):
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump({"name": REAL_STUDY_NAME, "description": "tiny real study for the report's "
                                     "browser test", "grid": {"use_ang": [True, False]},
                                     "fixed": {**tiny_config, "epochs": 1}}), encoding="utf-8")
    results_root = tmp_path / "results"
    command = [*RUN, "--space", str(space), "--data", str(tiny_data), "--categories", CATEGORIES,
               "--results", str(results_root)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=REAL_STUDY_TIMEOUT_S,
                          env={**child_env, "PYTHONHASHSEED": "0"})
    assert done.returncode == 0, done.stderr[-5000:]
    folders = [p.parent for p in results_root.rglob("study.json")]
    assert len(folders) == 1, folders
    report = folders[0] / "report.html"
    if not report.is_file():  # the runner writes it at the end of a study; build it here otherwise
        report = write_report(folders[0])
    assert_renders_offline(report, tmp_path, "real-study.png")
