"""The saved HTML view in a real browser: headless Chromium (Debian's ``chromium`` package).

The page is saved with :func:`attribot_rag.render.save_html`, screenshotted, and measured:
every highlighted sentence and citation marker must have a non-zero box inside the page, no two
may overlap, their text must contrast with its highlight, the screenshot's pixels must show
the highlight colours, and the per-answer-sentence picker must re-colour the sources. The
screenshot is kept at ``tests/artifacts/render_screenshot.png`` (and in pytest's tmp path).

The measuring script runs in a *copy* of the saved page (appended before ``</body>``; it only
writes an attribute), loaded at the same window size as the screenshot.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from attribot_rag.render import score_colour

ARTIFACTS = Path(__file__).parent / "artifacts"
WIDTH = 1100

_PROBE = r"""
<script>
window.addEventListener('load', function () {
  function boxes(el) {
    return Array.from(el.getClientRects()).map(function (r) {
      return [r.left + window.scrollX, r.top + window.scrollY, r.right + window.scrollX, r.bottom + window.scrollY];
    });
  }
  function info(el) {
    var cs = getComputedStyle(el);
    return {cls: el.className, text: el.textContent, rects: boxes(el), color: cs.color, bg: cs.backgroundColor,
            fontSize: parseFloat(cs.fontSize), visibility: cs.visibility, display: cs.display, opacity: cs.opacity,
            score: el.getAttribute('data-score'), k: el.getAttribute('data-k'),
            source: el.closest('.ab-source') ? +el.closest('.ab-source').getAttribute('data-index') : null,
            title: el.getAttribute('title')};
  }
  var root = document.querySelector('.ab-root');
  function attrs(sel, name) {
    return Array.from(root.querySelectorAll(sel)).map(function (e) { return e.getAttribute(name); });
  }
  var out = {
    width: document.documentElement.clientWidth, height: document.documentElement.scrollHeight,
    scripts: root.querySelectorAll('script').length,
    sentences: Array.from(root.querySelectorAll('.ab-sent')).map(info),
    markers: Array.from(root.querySelectorAll('.ab-marker')).map(info),
    answer: Array.from(root.querySelectorAll('.ab-ans-sent')).map(info),
    picks: Array.from(root.querySelectorAll('.ab-pick')).map(info),
    legend: Array.from(root.querySelectorAll('.ab-legend-max')).map(info)
  };
  // The per-answer-sentence view: the picker's button for answer sentence 2, then a click on sentence 1.
  root.querySelector('.ab-pick[data-view="2"]').click();
  out.view2 = {
    sentences: Array.from(root.querySelectorAll('.ab-sent')).map(info),
    pressed: attrs('.ab-pick', 'aria-pressed'),
    active: attrs('.ab-ans-sent.ab-active', 'data-j'),
    legend: root.querySelector('.ab-legend-max').textContent
  };
  root.querySelector('.ab-ans-sent[data-j="0"]').click();
  out.view1 = {active: attrs('.ab-ans-sent.ab-active', 'data-j'), view: root.getAttribute('data-view')};
  root.querySelector('.ab-ans-sent[data-j="0"]').click();
  out.back = root.getAttribute('data-view');
  document.documentElement.setAttribute('data-probe', JSON.stringify(out));
});
</script>
"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--force-device-scale-factor=1", "--hide-scrollbars", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp / 'profile'}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}"
    return proc


def _probe(browser: str, tmp: Path, page: Path, height: int) -> dict:
    probe = tmp / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _run(browser, tmp, f"--window-size={WIDTH},{height}", "--virtual-time-budget=3000", "--dump-dom",
               probe.as_uri()).stdout
    m = re.search(r'data-probe="([^"]*)"', dom)
    assert m, f"the measuring script did not run; DOM starts: {dom[:500]}"
    return json.loads(html.unescape(m.group(1)))


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(float(x)) for x in re.findall(r"[\d.]+", css)[:3])


def _luminance(rgb: tuple[int, ...]) -> float:
    def lin(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _overlap(a: list[float], b: list[float], tol: float = 0.5) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > tol and min(a[3], b[3]) - max(a[1], b[1]) > tol


@pytest.fixture(scope="module")
def browser() -> str:
    path = _chromium()
    if path is None:
        pytest.skip("chromium is not installed (CI installs Debian's chromium in .ci/run: apt-get install chromium)")
    return path


def test_saved_html_in_headless_chromium(browser, rendered_result, tmp_path):
    from PIL import Image

    page = rendered_result.save_html(tmp_path / "view.html")
    first = _probe(browser, tmp_path, page, 900)
    height = max(first["height"], 400)
    probe = _probe(browser, tmp_path, page, height)
    shot = tmp_path / "screenshot.png"
    _run(browser, tmp_path, f"--window-size={WIDTH},{height}", f"--screenshot={shot}", page.as_uri())
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "render_screenshot.png")
    shutil.copyfile(page, ARTIFACTS / "render_view.html")

    # Every sentence is in the DOM; the highlighted ones are exactly the visibly scored ones.
    flat = [s for row in rendered_result.sentence_scores for s in row]
    assert len(probe["sentences"]) == len(flat)
    assert probe["scripts"] == 1  # the picker's own; the document's <script> is text
    assert any('<script>alert("x")</script>' in s["text"] for s in probe["sentences"])
    highlighted = [s for s in probe["sentences"] if s["bg"] not in ("rgba(0, 0, 0, 0)", "transparent")]
    expected = [sc for sc in flat if sc.scored and score_colour(sc.score, 6.2)]
    assert len(highlighted) == len(expected) >= 5
    assert len(probe["markers"]) == sum(len(v) for v in rendered_result.answer_marks().values()) >= 2

    # Legible: non-zero boxes inside the page, readable size and contrast, nothing overlapping.
    checked = highlighted + probe["markers"] + probe["answer"]
    for el in checked:
        assert el["rects"], f"{el['cls']} {el['text']!r} has no box"
        assert el["visibility"] == "visible" and el["display"] != "none" and float(el["opacity"]) == 1
        assert el["fontSize"] >= 12, el
        for x0, y0, x1, y1 in el["rects"]:
            assert x1 - x0 > 2 and y1 - y0 > 8, f"{el['text']!r}: box {x1 - x0:.1f} x {y1 - y0:.1f}"
            assert 0 <= x0 and x1 <= probe["width"] and 0 <= y0 and y1 <= height, f"{el['text']!r} is clipped"
    for el in highlighted + probe["markers"]:
        ratio = _contrast(_rgb(el["color"]), _rgb(el["bg"]))
        assert ratio >= 4.5, f"{el['text']!r}: contrast {ratio:.2f} of {el['color']} on {el['bg']}"
    pieces = [(i, r) for i, el in enumerate(checked) for r in el["rects"]]
    clashes = [(checked[i]["text"], checked[j]["text"]) for n, (i, a) in enumerate(pieces)
               for j, b in pieces[n + 1:] if i != j and _overlap(a, b)]
    assert not clashes, f"overlapping elements: {clashes[:5]}"
    sentence_pieces = [(i, r) for i, el in enumerate(probe["sentences"]) for r in el["rects"]]
    clashes = [(i, j) for n, (i, a) in enumerate(sentence_pieces) for j, b in sentence_pieces[n + 1:]
               if i != j and _overlap(a, b)]
    assert not clashes, f"overlapping source sentences: {clashes[:5]}"
    # Hover text carries the numeric score.
    top = max(highlighted, key=lambda s: float(s["score"]))
    assert top["text"] == "The tower was designed by the engineer Ingrid Holmsen." and "+6.200 nats" in top["title"]

    # The screenshot shows what the DOM says: highlight colours behind the text, glyphs on them.
    img = Image.open(shot).convert("RGB")
    assert img.size == (WIDTH, height)

    def dominant(rect: list[float]) -> tuple[tuple[int, ...], int, int]:
        x0, y0, x1, y1 = (round(v) for v in rect)
        crop = img.crop((x0 + 1, y0 + 1, x1 - 1, y1 - 1))
        counts = crop.getcolors(maxcolors=crop.width * crop.height)
        n, colour = max(counts)
        return colour, n, sum(c for c, _ in counts)

    for el in [top, *probe["markers"]]:
        colour, n, total = dominant(el["rects"][0])
        want = _rgb(el["bg"])
        assert max(abs(a - b) for a, b in zip(colour, want)) <= 4, f"{el['text']!r}: {colour} drawn, {want} styled"
        assert total - n > 0.05 * total, f"{el['text']!r}: no glyphs drawn on the highlight"

    # The per-answer-sentence picker re-colours the sources for answer sentence 2.
    v2 = probe["view2"]
    assert v2["pressed"] == ["false", "false", "true"] and v2["active"] == ["1"]
    darkest = [s for s in v2["sentences"] if s["bg"] and _rgb(s["bg"]) == _rgb(score_colour(1.0, 1.0))]
    assert [s["text"] for s in darkest] == ["It was first lit on 14 October 1897, after three years of construction."]
    assert v2["legend"] == "+4.5 nats" and probe["legend"][0]["text"] == "+6.2 nats"
    assert probe["view1"] == {"active": ["0"], "view": "1"} and probe["back"] == "0"

