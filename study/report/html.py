"""A self-contained HTML page: plotly.js inlined once, figures as JSON, pictures as data URIs.

The page opens offline (no CDN, fonts or style sheets from elsewhere). After the figures are drawn it writes
``data-plots-expected`` / ``data-plots-rendered`` on ``<body>`` and any script error into
``data-script-errors`` on ``<html>``, so a headless browser's ``--dump-dom`` shows whether it rendered.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

MISSING = "–"
PLOT_CONFIG = {"responsive": True, "displaylogo": False}
DEFAULT_FIGURE_HEIGHT = 450

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 0 24px 48px; color: #1f2328; }
h1 { margin-top: 24px; } h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 4px; margin-top: 40px; }
h3 { margin-top: 28px; }
nav { position: sticky; top: 0; background: #fff; padding: 8px 0; border-bottom: 1px solid #d0d7de; z-index: 10; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; }
th { background: #f6f8fa; } td.text, th.text { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th.sorted-asc::after { content: " ▲"; } table.sortable th.sorted-desc::after { content: " ▼"; }
tr.pinned td { font-weight: 600; background: #f6f8fa; }
.note { color: #57606a; font-size: 13px; } .na { color: #9a6700; background: #fff8c5; padding: 6px 10px; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 12px; white-space: pre-wrap; }
.plot { width: 100%; min-height: 200px; }
.examples { display: flex; flex-wrap: wrap; gap: 12px; }
.example { border: 1px solid #d0d7de; padding: 6px; font-size: 12px; }
.example img { width: 128px; height: 128px; image-rendering: pixelated; object-fit: contain; margin-right: 4px; }
.yes { color: #1a7f37; font-weight: 600; } .no { color: #57606a; }
"""

# Registered first in <head>: collects script errors (and failed resource loads) into data-script-errors.
ERROR_CAPTURE_JS = """
(function () {
  var errors = [];
  function record(message) {
    errors.push(String(message));
    document.documentElement.setAttribute("data-script-errors", JSON.stringify(errors));
  }
  window.addEventListener("error", function (event) {
    var target = event.target || {};
    if (target !== window && (target.src || target.href)) { record("failed to load " + (target.src || target.href)); }
    else { record((event.message || "error") + " at " + (event.filename || "?") + ":" + (event.lineno || 0)); }
  }, true);
  window.addEventListener("unhandledrejection", function (event) { record("unhandled rejection: " + event.reason); });
  window.reportRecordError = record;
})();
"""

RENDER_JS = """
(function () {
  var blobs = document.querySelectorAll("script.plot-data");
  document.body.setAttribute("data-plots-expected", String(blobs.length));
  var jobs = [];
  blobs.forEach(function (blob) {
    var figure = JSON.parse(blob.textContent);
    var target = document.getElementById(blob.getAttribute("data-target"));
    jobs.push(Plotly.newPlot(target, figure.data, figure.layout || {}, %(config)s));
  });
  Promise.all(jobs).then(function () {
    var drawn = 0;
    document.querySelectorAll(".js-plotly-plot").forEach(function (plot) {
      if (plot.querySelector("svg.main-svg")) { drawn += 1; }
    });
    document.body.setAttribute("data-plots-rendered", String(drawn));
  }).catch(function (error) { window.reportRecordError("plotting failed: " + error); });
})();
"""

# Click a header to sort by that column (numbers numerically, "–" last); rows of class "pinned" stay last.
SORT_JS = """
(function () {
  function key(cell) {
    var text = (cell.getAttribute("data-sort") || cell.textContent).trim();
    var number = parseFloat(text);
    return { missing: text === "" || text === "%(missing)s", number: number, text: text };
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (header, column) {
      header.addEventListener("click", function () {
        var ascending = !header.classList.contains("sorted-asc");
        table.querySelectorAll("thead th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
        header.classList.add(ascending ? "sorted-asc" : "sorted-desc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var pinned = rows.filter(function (r) { return r.classList.contains("pinned"); });
        var sortable = rows.filter(function (r) { return !r.classList.contains("pinned"); });
        sortable.sort(function (a, b) {
          var x = key(a.cells[column]), y = key(b.cells[column]);
          if (x.missing || y.missing) { return x.missing - y.missing; }
          var order = (!isNaN(x.number) && !isNaN(y.number)) ? x.number - y.number : x.text.localeCompare(y.text);
          return ascending ? order : -order;
        });
        sortable.concat(pinned).forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def note(text: str) -> str:
    """A grey explanatory line."""
    return f'<p class="note">{esc(text)}</p>'


def not_available(reason: str) -> str:
    """The explicit "not available because ..." box every empty section shows."""
    text = reason if reason.lower().startswith("not available") else f"Not available because {reason}"
    return f'<p class="na">{esc(text)}</p>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def format_cell(value: Any, decimals: int) -> str:
    """Floats with ``decimals`` places, missing values (None, NaN, NA) as ``–``, anything else as text."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return MISSING if math.isnan(value) else f"{value:.{decimals}f}"
    if value is None or value is pd.NA:
        return MISSING
    return str(value)


def table(frame: pd.DataFrame, *, decimals: int = 1, sortable: bool = True, pinned_last: int = 0,
          text_columns: Iterable[str] = (), raw_html_columns: Iterable[str] = ()) -> str:
    """An HTML table of ``frame`` (its columns as headers, no index). The last ``pinned_last`` rows (e.g. a
    mean row) stay at the bottom when sorting; ``raw_html_columns`` hold already-escaped HTML."""
    text_set = set(text_columns) | {c for c in frame.columns if frame[c].dtype.kind in "OSUb" or
                                    str(frame[c].dtype) in ("str", "string")}
    raw = set(raw_html_columns)
    header = "".join(f'<th class="{"text" if c in text_set else "num"}">{esc(c)}</th>' for c in frame.columns)
    body = []
    for position, (_, row) in enumerate(frame.iterrows()):
        pinned = position >= len(frame) - pinned_last
        cells = []
        for column in frame.columns:
            value = row[column]
            content = str(value) if column in raw else esc(format_cell(value, decimals))
            css = "text" if column in text_set else "num"
            cells.append(f'<td class="{css}">{content}</td>')
        body.append(f'<tr{" class=pinned" if pinned else ""}>{"".join(cells)}</tr>')
    css_class = "sortable" if sortable else "plain"
    return (f'<table class="{css_class}"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    """A two-column table of labels and values (a summary block)."""
    rows = "".join(f'<tr><th class="text">{esc(k)}</th><td class="text">{esc(format_cell(v, 4))}</td></tr>'
                   for k, v in pairs)
    return f'<table class="plain">{rows}</table>'


def image_data_uri(path: Path) -> str | None:
    """A PNG file as a ``data:image/png;base64,...`` URI; None when the file is missing."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image_tag(path: Path, alt: str) -> str:
    uri = image_data_uri(path)
    if uri is None:
        return f'<span class="na">{esc(alt)}: missing file {esc(path.name)}</span>'
    return f'<img src="{uri}" alt="{esc(alt)}" title="{esc(alt)}">'


class Page:
    """Collects figures while sections are built; :meth:`render` writes the whole document once."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._figure_count = 0

    @property
    def figure_count(self) -> int:
        return self._figure_count

    def figure(self, fig: go.Figure) -> str:
        """A placeholder div plus the figure's JSON (``</`` escaped so it cannot close the script tag)."""
        index = self._figure_count
        self._figure_count += 1
        if fig.layout.height is None:  # Optuna's figures leave it to the container, which has none here
            fig = go.Figure(fig).update_layout(height=DEFAULT_FIGURE_HEIGHT)
        payload = pio.to_json(fig, validate=False).replace("</", "<\\/")
        return (f'<div class="plot" id="plot-{index}"></div>'
                f'<script type="application/json" class="plot-data" data-target="plot-{index}">{payload}</script>')

    def render(self, body: str, navigation: Sequence[tuple[str, str]] = ()) -> str:
        nav = "".join(f'<a href="#{esc(anchor)}">{esc(label)}</a>' for anchor, label in navigation)
        render_js = RENDER_JS % {"config": pio.json.to_json_plotly(PLOT_CONFIG)}
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(self.title)}</title>\n<style>{STYLE}</style>\n"
            f"<script>{ERROR_CAPTURE_JS}</script>\n</head>\n<body>\n"
            f"<h1>{esc(self.title)}</h1>\n<nav>{nav}</nav>\n{body}\n"
            f"<script>{get_plotlyjs()}</script>\n<script>{render_js}</script>\n"
            f"<script>{SORT_JS % {'missing': MISSING}}</script>\n</body>\n</html>\n"
        )
