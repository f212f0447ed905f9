"""The HTML and terminal renderers (attribot_rag.render), on a hand-scored result and the tiny model."""

import html
import json
import re
from html.parser import HTMLParser

import pytest
from rich.console import Console

from attribot_rag import Attributor
from attribot_rag.cli import main
from attribot_rag.render import render_terminal, save_html, score_colour, to_html, view_scale


class _Collect(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> elements."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


def _parse(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    return p


def _by_class(p: _Collect, cls: str) -> list[dict]:
    return [a for _, a in p.tags if cls in (a.get("class") or "").split()]


def test_markup_in_documents_is_rendered_as_text(rendered_result):
    out = to_html(rendered_result)
    p = _parse(out)
    # Only the renderer's own picker script; the document's <script> is text.
    assert [t for t, _ in p.tags].count("script") == 1
    assert all("alert" not in s for s in p.scripts)
    assert '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;' in out
    assert "<b>bold</b>" not in out and "<i>Markup</i>" not in out
    assert "&lt;i&gt;Markup&lt;/i&gt;" in out
    assert "javascript:" not in out  # a non-http(s) url is not linked
    # Every highlighted span's escaped text round-trips to exactly its sentence.
    spans = [html.unescape(t) for t in re.findall(r'<span class="ab-sent[^"]*"[^>]*>(.*?)</span>', out)]
    assert spans == [s.text for src in rendered_result.sources for s in src.sentences]
    assert 'Beware <script>alert("x")</script> & <b>bold</b> claims.' in spans


def test_structure_scores_and_markers(rendered_result):
    r = rendered_result
    out = to_html(r, element_id="view1")
    p = _parse(out)
    sents = _by_class(p, "ab-sent")
    assert len(sents) == sum(len(s.sentences) for s in r.sources)
    flat = [s for row in r.sentence_scores for s in row]
    for attrs, sc in zip(sents, flat):
        if sc.scored:
            assert float(attrs["data-score"]) == pytest.approx(sc.score, abs=1e-6)
            assert f"{sc.score:+.3f} nats" in attrs["title"]
            views = json.loads(attrs["data-v"])
            assert len(views) == 1 + len(r.answer_sentences)
            assert [v[2] for v in views[1:]] == pytest.approx(sc.answer_sentence_scores, abs=1e-6)
        else:
            assert "ab-unscored" in attrs["class"] and "not scored" in attrs["title"]
    # Markers: exactly those of marked_answer, linking to the source elements.
    marks = r.answer_marks()
    markers = _by_class(p, "ab-marker")
    assert [(int(m["data-j"]), int(m["data-source"]) + 1) for m in markers] == [
        (j, n) for j in sorted(marks) for n in sorted(marks[j])]
    ids = {a.get("id") for _, a in p.tags}
    assert all(m["href"][1:] in ids for m in markers)
    assert re.sub(r"<[^>]+>", "", out.split('class="ab-answer">')[1].split("</div>")[0]) == html.escape(
        r.marked_answer(), quote=True)
    # One picker button per answer sentence plus "whole answer"; ids derive from element_id.
    assert [b["data-view"] for b in _by_class(p, "ab-pick")] == ["0", "1", "2"]
    assert "view1-src-0" in ids and "'view1'" in p.scripts[0]


def test_colour_scale():
    assert score_colour(0.0, 2.0) == "" and score_colour(1.0, 0.0) == ""
    hot, mid = score_colour(2.0, 2.0), score_colour(1.0, 2.0)
    assert hot == score_colour(50.0, 2.0)  # capped at the scale
    r, g, b = map(int, re.findall(r"\d+", hot))
    assert r > g > b  # orange
    r2, g2, b2 = map(int, re.findall(r"\d+", score_colour(-2.0, 2.0)))
    assert b2 > g2 > r2  # blue
    assert sum(map(int, re.findall(r"\d+", mid))) > r + g + b  # lighter for a smaller score
    assert view_scale([1.0, 3.0, -5.0]) == 3.0 and view_scale([-1.0, -4.0]) == 4.0 and view_scale([]) == 0.0


def test_highlight_follows_scores(rendered_result):
    p = _parse(to_html(rendered_result))
    sents = {(a.get("data-k"), a.get("data-score")): a for a in _by_class(p, "ab-sent")}
    top = sents[("1", "6.2")]
    assert "background:" in top.get("style", "")
    # In answer sentence 2's view the "first lit" sentence is the darkest.
    views = json.loads(sents[("2", "4.6")]["data-v"])
    assert views[2][0] == score_colour(1.0, 1.0)
    assert views[1][0] != views[2][0]
    negative = sents[("2", "-1.1")]  # -1.2 + 0.1
    r, g, b = map(int, re.findall(r"\d+", negative["style"]))
    assert b > r


def test_repr_html_save_html_and_stable_ids(rendered_result, tmp_path):
    r = rendered_result
    assert r.to_html() == to_html(r) == to_html(r)  # deterministic
    path = r.save_html(tmp_path / "sub" / "view.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert to_html(r) in page
    assert save_html(r, tmp_path / "v2.html", collapse_unused=True).read_text().count("<details") == sum(
        not u for u in r.used_mask())
    with pytest.raises(ValueError, match="element_id"):
        to_html(r, element_id="x'); alert(1); ('")


def test_inline_views_of_one_result_get_distinct_ids(rendered_result):
    """Shown twice in a notebook, each view has its own root id, so each picker's script finds its own view."""
    first, second = rendered_result._repr_html_(), rendered_result._repr_html_()
    ids = [_by_class(_parse(h), "ab-root")[0]["id"] for h in (first, second)]
    assert ids[0] != ids[1] and ids[0].startswith(ids[1].rsplit("-", 1)[0])
    assert f"document.getElementById('{ids[1]}')" in second and f'href="#{ids[1]}-src-' in second


def test_single_sentence_answer_has_no_picker(tiny, sources):
    r = Attributor(tiny, strategy="batched").attribute("Who built the tower?", sources, "Gustave Eiffel.")
    out = r.to_html()
    p = _parse(out)
    assert not _by_class(p, "ab-pick") and not p.scripts and "<script>" not in out
    assert len(_by_class(p, "ab-sent")) == sum(len(s.sentences) for s in r.sources)


def test_render_terminal(rendered_result):
    r = rendered_result
    r.sources[0].id = "[bold]not-markup"  # the used source: named in the table and the used list
    con = Console(record=True, width=140, color_system="truecolor", force_terminal=True)
    render_terminal(r, console=con)
    text = con.export_text(clear=False)
    assert "Answer:   " + r.marked_answer() in text and "Citations (hierarchical" in text
    assert "[1] [bold]not-markup" in text  # ids are never parsed as rich markup
    assert "Support:  not checked" in text  # a hand-built result carries no context-support scores
    assert "Sources used:" in text and "The tower was designed by the engineer Ingrid Holmsen." in text
    assert "Time: 1.2s total" in text
    # On a colour terminal the top sentence carries its highlight colour.
    ansi = con.export_html(inline_styles=True)
    r_, g_, b_ = map(int, re.findall(r"\d+", score_colour(1.0, 1.0)))
    assert f"#{r_:02x}{g_:02x}{b_:02x}" in ansi


def test_cli_html_option(capsys, model_dir, tmp_path):
    out_file = tmp_path / "cite.html"
    code = main(["cite", "--target", str(model_dir), "--dtype", "fp32", "--answer",
                 "Ingrid Holmsen designed it. It was lit in 1897.", "--strategy", "batched", "--json",
                 "--html", str(out_file)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    json.loads(captured.out)  # --json output stays pure JSON
    assert "HTML view written to" in captured.err
    page = out_file.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "ab-sent" in page
    # The table output is rendered with rich and still names its parts.
    code = main(["cite", "--target", str(model_dir), "--dtype", "fp32", "--answer", "Ingrid Holmsen.",
                 "--no-progress", "--html", str(tmp_path / "d" / "x.html")])
    captured = capsys.readouterr()
    assert code == 0 and "Citations" in captured.out and "Answer:" in captured.out
    assert (tmp_path / "d" / "x.html").is_file()
    assert main(["cite", "--target", str(model_dir), "--answer", "x.", "--html", str(tmp_path)]) == 2
    assert "cannot write the HTML view" in capsys.readouterr().err


def test_render_terminal_without_colours_skips_source_text(rendered_result):
    con = Console(record=True, width=120, color_system=None)
    render_terminal(rendered_result, console=con, top_k=2)
    text = con.export_text()
    assert "Sources used: [1] skarvoy-lighthouse" in text
    assert "Its white cast-iron tower" not in text  # not cited in the top 2, and no source text
    render_terminal(rendered_result, console=con, top_k=2, show_sources=True)
    assert "Its white cast-iron tower" in con.export_text()


def test_terminal_control_characters_in_retrieved_text_are_neutralised(rendered_result):
    """An ESC sequence inside a document, its id or the answer must not reach the terminal."""
    import dataclasses
    import io

    r = rendered_result
    src = r.sources[0]
    bad = "\x1b]0;pwned\x07\x1b[31m\u202e"  # ... and a right-to-left override
    r.sources[0] = dataclasses.replace(src, id=src.id + "\x1b[2J", text=bad + src.text[len(bad):])
    r.answer = "\x1b[5m" + r.answer[4:]
    buf = io.StringIO()
    render_terminal(r, console=Console(file=buf, width=140, color_system="truecolor", force_terminal=True))
    out = buf.getvalue()
    assert "]0;pwned" not in out.replace("\ufffd]0;pwned", "") and "\x1b[2J" not in out and "\x1b[5m" not in out
    assert "\x07" not in out and "\u202e" not in out and "\ufffd" in out


def test_to_json_with_numpy_metadata_and_top_k(rendered_result):
    import numpy as np
    import pytest

    from attribot_rag import ConfigError

    r = rendered_result
    r.sources[0].metadata.update(score=np.float32(0.5), page=np.int64(3), vec=np.arange(2))
    data = json.loads(r.to_json(top_k=2))
    assert len(data["citations"]) == 2
    meta = next(c["metadata"] for c in data["citations"] if c["source_id"] == r.sources[0].id)
    assert meta["score"] == 0.5 and meta["page"] == 3 and meta["vec"] == [0, 1]
    with pytest.raises(ConfigError, match="top_k"):
        r.citations(top_k=-1)


def _hand_result(meta=None):
    """Source a: sentences +6 (answer sentence 0) and +5 (sentence 1); source b: +1 and -2 (net -1)."""
    from attribot_rag import AttributionResult, SpanScore, split_source, split_text
    from attribot_rag.spans import Source

    srcs = [split_source(Source("a", "Alpha one. Alpha two. Alpha three.", dict(meta or {}))),
            split_source(Source("b", "Beta one. Beta two."))]
    answer = "First claim. Second claim."
    table = {(0, 0): (6.0, 0.0), (0, 1): (0.0, 5.0), (0, 2): (0.0, 0.0), (1, 0): (1.0, 0.0), (1, 1): (-2.0, 0.0)}
    rows = [[SpanScore(i, k, sum(table[i, k]), list(table[i, k]), "m") for k in range(len(s.sentences))]
            for i, s in enumerate(srcs)]
    docs = [SpanScore(i, None, sum(x.score for x in r), [sum(x.answer_sentence_scores[j] for x in r) for j in (0, 1)],
                      "sum of sentences") for i, r in enumerate(rows)]
    return AttributionResult("Q?", answer, srcs, split_text(answer, None), docs, rows, "batched")


def test_markers_name_only_sources_reported_used():
    """Source b has a +1 nat sentence but a net negative document score: no [2] marker, and 'not used'."""
    r = _hand_result()
    assert r.used_mask() == [True, False]
    assert [c.source_id for c in r.citations()] == ["a", "a", "b"]  # b's sentence is still a citation
    assert r.marked_answer() == "First claim.[1] Second claim.[1]"
    out = r.to_html()
    assert 'data-source="1"' not in out and 'data-index="1" data-used="false"' in out


def test_to_json_is_strict_json_for_any_metadata():
    import threading

    import numpy as np

    meta = {"score": float("nan"), "rank": np.float32("inf"), "lock": threading.Lock(),
            "by_page": {np.int64(3): "x", (1, 2): [np.float64(0.5), float("nan")]}, "vec": np.array([1.0, np.nan])}
    r = _hand_result(meta)

    def strict(name):
        raise ValueError(f"{name} is not JSON")

    d = json.loads(r.to_json(top_k=np.int64(1)), parse_constant=strict)
    m = d["citations"][0]["metadata"]
    assert len(d["citations"]) == 1 and m["score"] is None and m["rank"] is None and m["vec"] == [1.0, None]
    assert m["by_page"] == {"3": "x", "[1, 2]": [0.5, None]} and m["lock"].startswith("<unlocked _thread.lock")
    assert r.citations()[0].metadata["lock"] is meta["lock"]  # metadata is not deep-copied


def test_used_rule_needs_both_the_score_and_the_share():
    """Default: above 1.0 nats AND at least 15% of the positive document score (no support scores here)."""
    from attribot_rag import AttributionResult, SpanScore, split_source, split_text
    from attribot_rag.spans import Source

    scores = [10.0, 0.3, 0.08, -1.0, 1.9]  # shares: 0.82, 0.025, 0.007, 0, 0.156
    srcs = [split_source(Source(str(i), f"Doc {i}.")) for i in range(len(scores))]
    rows = [[SpanScore(i, 0, s, [s], "m")] for i, s in enumerate(scores)]
    docs = [SpanScore(i, None, s, [s], "m") for i, s in enumerate(scores)]
    r = AttributionResult("Q?", "A.", srcs, split_text("A.", None), docs, rows, "batched")
    assert r.used_mask() == [True, False, False, False, True]
    assert r.used_mask(min_score=0.1, min_share=None) == [True, True, False, False, True]
    assert r.used_mask(min_score=0.5, min_share=None) == [True, False, False, False, True]
    assert r.used_mask(min_share=0.2) == [True, False, False, False, False]  # 1.9 nats is only 15.5%
    assert [s.id for s in r.used_sources()] == ["0", "4"]
