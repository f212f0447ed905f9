"""See which sources an answer used: a self-contained HTML view and a terminal view.

:func:`to_html` renders an :class:`~attribot_rag.result.AttributionResult` as one HTML fragment
(inline CSS, a few lines of inline JavaScript, no network): the answer with ``[n]`` citation
markers, a colour legend, and every source with each sentence highlighted by its leave-one-out
score (hover for the number). A picker switches between the whole answer and one answer
sentence, showing which source sentences *that* sentence relied on. Jupyter shows it inline
(``AttributionResult._repr_html_``); :func:`save_html` writes a standalone page.

:func:`render_terminal` prints the same result with rich: the marked answer, a citation table
and the used sources with their sentences highlighted.

Colour scale: a sentence's score divided by the largest positive sentence score of the view;
positive scores are orange, negative ones (the answer became *more* likely without the
sentence) blue, sentences the strategy did not score are grey and dotted. Every text is escaped.
"""

from __future__ import annotations

import colorsys
import hashlib
import html
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from .decisions import Decisions
    from .result import AttributionResult

POSITIVE_HUE = 30.0  # orange
NEGATIVE_HUE = 212.0  # blue
_LIGHT_MAX, _LIGHT_MIN = 97.0, 60.0  # HSL lightness at |score| -> 0 and at |score| = the view's scale
_MIN_VISIBLE = 0.01  # |score| / scale below this is drawn without a background

_CSS = """
.ab-root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;font-size:15px;
 line-height:1.75;color:#111;background:#fff;max-width:980px;padding:14px 18px;border:1px solid #ddd;
 border-radius:8px;box-sizing:border-box}
.ab-root *{box-sizing:border-box}
.ab-root h3{font-size:13px;text-transform:uppercase;letter-spacing:.05em;color:#555;margin:14px 0 4px}
.ab-root .ab-question{font-weight:600;margin:0 0 6px}
.ab-root .ab-answer{font-size:16px;margin:0 0 8px}
.ab-root .ab-support{font-size:13px;color:#444;margin:0 0 8px}
.ab-root .ab-ans-sent{border-radius:3px;padding:0 1px}
.ab-root .ab-ans-sent[role="button"]{cursor:pointer}
.ab-root .ab-ans-sent[role="button"]:hover{background:#f1f1f1}
.ab-root .ab-ans-sent.ab-active{background:#fff3c4;outline:1px solid #e0b400}
.ab-root .ab-marker{display:inline-block;font-size:12px;line-height:1.2;font-weight:700;color:#0b57d0;
 text-decoration:none;vertical-align:super;margin:0 1px 0 2px;padding:0 2px;border-radius:3px;background:#e8f0fe}
.ab-root .ab-marker:hover{background:#c9dcfd}
.ab-root .ab-picker{margin:4px 0 8px;font-size:13px}
.ab-root .ab-pick{font:inherit;font-size:13px;margin:2px 4px 2px 0;padding:1px 8px;border:1px solid #bbb;
 border-radius:12px;background:#fafafa;color:#222;cursor:pointer}
.ab-root .ab-pick[aria-pressed="true"]{background:#222;color:#fff;border-color:#222}
.ab-root .ab-legend{display:flex;align-items:center;gap:8px;font-size:12px;color:#333;margin:6px 0 10px;
 flex-wrap:wrap}
.ab-root .ab-scale{width:220px;height:12px;border:1px solid #ccc;border-radius:2px}
.ab-root .ab-source{border-top:1px solid #e5e5e5;padding:6px 0 4px}
.ab-root .ab-source-head{font-size:13px;color:#333;margin-bottom:2px}
.ab-root .ab-source-head a{color:#0b57d0}
.ab-root .ab-num{font-weight:700;color:#0b57d0}
.ab-root .ab-badge{display:inline-block;font-size:11px;line-height:1.4;padding:0 6px;border-radius:8px;
 margin-left:6px;background:#eee;color:#444}
.ab-root .ab-badge.ab-used{background:#dff3e4;color:#14532d}
.ab-root .ab-text{white-space:pre-wrap;overflow-wrap:anywhere}
.ab-root .ab-sent{border-radius:3px;padding:0 2px}
.ab-root .ab-unscored{color:#666;border-bottom:1px dotted #bbb}
.ab-root .ab-swatch{display:inline-block;padding:0 6px;border-radius:3px}
.ab-root .ab-legend-note{flex-basis:100%;color:#555}
.ab-root .ab-foot{font-size:12px;color:#555;margin-top:8px}
.ab-root details>summary{cursor:pointer}
"""

# Picks a view: 0 = the whole answer, j + 1 = answer sentence j. Each [data-v] element holds one
# entry per view (sentences: [background, title, score]; labels: their text).
_JS = """(function(){var s=document.currentScript,r=(s&&s.closest&&s.closest('.ab-root'))||
document.getElementById('%s');if(!r||r.getAttribute('data-ab-ready'))return;r.setAttribute('data-ab-ready','1');
function show(v){r.setAttribute('data-view',v);r.querySelectorAll('[data-v]').forEach(function(e){
var d=JSON.parse(e.getAttribute('data-v'))[v];if(e.classList.contains('ab-sent')){e.style.background=d[0];
e.title=d[1];e.setAttribute('data-score',d[2]);}else{e.textContent=d;}});
r.querySelectorAll('.ab-pick').forEach(function(b){b.setAttribute('aria-pressed',b.getAttribute('data-view')==v);});
r.querySelectorAll('.ab-ans-sent').forEach(function(a){a.classList.toggle('ab-active',+a.getAttribute('data-j')+1==v);});}
function pick(t){var v=t.classList.contains('ab-pick')?+t.getAttribute('data-view'):+t.getAttribute('data-j')+1;
if(!t.classList.contains('ab-pick')&&r.getAttribute('data-view')==v)v=0;show(v);}
r.addEventListener('click',function(e){var t=e.target.closest('.ab-pick,.ab-ans-sent');if(t&&r.contains(t))pick(t);});
r.addEventListener('keydown',function(e){var t=e.target.closest('.ab-ans-sent');
if(t&&(e.key==='Enter'||e.key===' ')){e.preventDefault();pick(t);}});})();"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _attr_json(value: Any) -> str:
    return _esc(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _rgb(hue: float, lightness: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(hue / 360.0, lightness / 100.0, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def score_colour(score: float, scale: float) -> str:
    """The highlight colour of ``score`` on a view whose largest positive score is ``scale``.

    ``""`` (no background) for scores too small to see; otherwise ``rgb(r, g, b)``: orange for
    positive scores, blue for negative ones, darker with ``|score| / scale`` (capped at 1).
    """
    if scale <= 0 or score != score:  # no scale, or NaN
        return ""
    t = min(abs(score) / scale, 1.0)
    if t < _MIN_VISIBLE:
        return ""
    hue = POSITIVE_HUE if score > 0 else NEGATIVE_HUE
    r, g, b = _rgb(hue, _LIGHT_MAX - (_LIGHT_MAX - _LIGHT_MIN) * t)
    return f"rgb({r}, {g}, {b})"


def view_scale(scores: list[float]) -> float:
    """The normaliser of a view: its largest positive score (the largest |score| if none is positive)."""
    pos = max((s for s in scores if s > 0), default=0.0)
    return pos if pos > 0 else max((abs(s) for s in scores), default=0.0)


def _fmt(score: float) -> str:
    return f"{score:+.3f}"


def _element_id(result: AttributionResult) -> str:
    payload = json.dumps([result.question, result.answer, [s.id for s in result.sources],
                          [d.score for d in result.document_scores]], default=str)
    return "ab-" + hashlib.sha1(payload.encode()).hexdigest()[:10]


def _safe_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        scheme = urlparse(value).scheme.lower()
    except ValueError:
        return None
    return value if scheme in ("http", "https") else None


def _answer_label(text: str, n: int = 32) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def to_html(
    result: AttributionResult,
    *,
    top_k: int = 5,
    per_sentence: int = 3,
    collapse_unused: bool = False,
    element_id: str | None = None,
    full_page: bool = False,
) -> str:
    """Render ``result`` as self-contained HTML (a ``<div class="ab-root">`` fragment).

    Args:
        result: what :meth:`Attributor.attribute` returned.
        top_k / per_sentence: the answer's ``[n]`` markers come from the ``top_k`` best
            citations, at most ``per_sentence`` sources per answer sentence (as
            :meth:`AttributionResult.marked_answer`).
        collapse_unused: fold the sources the answer did not use (``used_sources``) into
            closed ``<details>`` elements.
        element_id: the root element's id (default: derived from the result's content);
            element ids inside are ``{element_id}-src-{i}``.
        full_page: a complete ``<!DOCTYPE html>`` page instead of a fragment.

    Stable hooks: ``.ab-ans-sent[data-j]`` (answer sentences), ``.ab-marker[data-source]``
    (markers; ``data-source`` is the 0-based source index), ``.ab-source[data-index]``,
    ``.ab-sent[data-score]`` (source sentences; ``title`` holds the score for hover),
    ``.ab-pick[data-view]`` (the picker: 0 = whole answer, j + 1 = answer sentence j).
    """
    root_id = element_id or _element_id(result)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", root_id):
        raise ValueError(f"element_id {root_id!r} must be letters, digits, '-' or '_', starting with a letter")
    n_ans = len(result.answer_sentences)
    flat = [s for row in result.sentence_scores for s in row]
    scored = [s for s in flat if s.scored]
    scales = [view_scale([s.score for s in scored])]
    scales += [view_scale([s.answer_sentence_scores[j] for s in scored]) for j in range(n_ans)]
    total_pos = sum(max(s.score, 0.0) for s in scored)
    from .decisions import DEFAULT_RULE

    # one decision for the whole view: the markers and the used list come from the same verdicts
    verdicts = result.decisions(DEFAULT_RULE.with_options(mark_top_k=top_k, marks_per_sentence=per_sentence))
    used = verdicts.used
    shares = result.source_shares()
    marks = verdicts.marks

    out: list[str] = [f'<div class="ab-root" id="{root_id}" data-view="0"><style>{_CSS}</style>']
    out.append(f'<div class="ab-question">Q: {_esc(result.question)}</div>')

    # The answer, sentence by sentence, with [n] markers linking to the sources.
    answer_parts, pos = [], 0
    for j, sent in enumerate(result.answer_sentences):
        answer_parts.append(_esc(result.answer[pos:sent.start]))
        pickable = ' tabindex="0" role="button" title="show the sources of this sentence"' if n_ans > 1 else ""
        answer_parts.append(f'<span class="ab-ans-sent" data-j="{j}"{pickable}>'
                            f"{_esc(result.answer[sent.start:sent.end])}</span>")
        for n in sorted(marks.get(j, [])):
            i = n - 1
            d = result.document_scores[i]
            tip = (f"[{n}] {result.sources[i].id}: document score {_fmt(d.score)} nats, "
                   f"{_fmt(d.answer_sentence_scores[j]) if j < len(d.answer_sentence_scores) else 'n/a'} "
                   f"nats for this sentence")
            answer_parts.append(f'<a class="ab-marker" href="#{root_id}-src-{i}" data-source="{i}" '
                                f'data-j="{j}" title="{_esc(tip)}">[{n}]</a>')
        pos = sent.end
    answer_parts.append(_esc(result.answer[pos:]))
    out.append('<h3>Answer</h3><div class="ab-answer">' + "".join(answer_parts) + "</div>")
    out.append(f'<div class="ab-support">{_esc(support_line(verdicts))}</div>')

    # The per-answer-sentence picker.
    if n_ans > 1:
        buttons = ['<button type="button" class="ab-pick" data-view="0" aria-pressed="true">whole answer</button>']
        buttons += [
            f'<button type="button" class="ab-pick" data-view="{j + 1}" aria-pressed="false" '
            f'title="{_esc(s.text)}">{j + 1}: {_esc(_answer_label(s.text))}</button>'
            for j, s in enumerate(result.answer_sentences)
        ]
        out.append('<div class="ab-picker">Highlight the sources of: ' + "".join(buttons) + "</div>")

    # The legend: the colour scale of the current view.
    neg, pos_c = score_colour(-1.0, 1.0), score_colour(1.0, 1.0)
    lo = [f"−{s:.3g}" for s in scales]
    hi = [f"+{s:.3g} nats" for s in scales]
    out.append(
        '<div class="ab-legend" aria-label="colour scale">'
        f'<span class="ab-legend-min" data-v="{_attr_json(lo)}">{_esc(lo[0])}</span>'
        f'<span class="ab-scale" style="background:linear-gradient(to right,{neg},#fff,{pos_c})"></span>'
        f'<span class="ab-legend-max" data-v="{_attr_json(hi)}">{_esc(hi[0])}</span>'
        '<span class="ab-swatch ab-unscored">not scored</span>'
        '<span class="ab-legend-note">leave-one-out score: nats of answer log-likelihood lost without the '
        "sentence (orange: the answer relied on it; blue: the answer is likelier without it). "
        "Hover a sentence for its score.</span></div>"
    )

    # The sources, each sentence highlighted.
    out.append("<h3>Sources</h3>")
    for i, src in enumerate(result.sources):
        d = result.document_scores[i]
        head_v = [f"{_fmt(d.score)} nats · {shares[i]:.0%}"]
        head_v += [f"{_fmt(d.answer_sentence_scores[j])} nats for sentence {j + 1}" for j in range(n_ans)]
        title = src.metadata.get("title")
        url = _safe_url(src.metadata.get("url")) or _safe_url(src.metadata.get("source"))
        name = _esc(src.id)
        if url:
            name = f'<a href="{_esc(url)}" target="_blank" rel="noopener noreferrer">{name}</a>'
        head = (f'<span class="ab-num">[{i + 1}]</span> {name}'
                + (f" — {_esc(title)}" if isinstance(title, str) and title and title != src.id else "")
                + f' · <span class="ab-doc-score" data-v="{_attr_json(head_v)}">{_esc(head_v[0])}</span>'
                + ('<span class="ab-badge ab-used">used</span>' if used[i]
                   else '<span class="ab-badge">not used</span>'))

        text_parts, pos = [], 0
        for k, sent in enumerate(src.sentences):
            sc = result.sentence_scores[i][k]
            text_parts.append(_esc(src.text[pos:sent.start]))
            if not sc.scored:
                text_parts.append(f'<span class="ab-sent ab-unscored" data-score="" data-k="{k}" '
                                  f'title="not scored: the strategy skipped this sentence">'
                                  f"{_esc(src.text[sent.start:sent.end])}</span>")
            else:
                views = []
                share = max(sc.score, 0.0) / total_pos if total_pos > 0 else 0.0
                views.append([score_colour(sc.score, scales[0]),
                              f"{_fmt(sc.score)} nats ({share:.0%} of the positive total; {sc.scored_by})",
                              round(sc.score, 6)])
                for j in range(n_ans):
                    v = sc.answer_sentence_scores[j]
                    views.append([score_colour(v, scales[j + 1]), f"{_fmt(v)} nats for answer sentence {j + 1}",
                                  round(v, 6)])
                bg = views[0][0]
                style = f' style="background:{bg}"' if bg else ""
                text_parts.append(
                    f'<span class="ab-sent" data-k="{k}" data-score="{views[0][2]}" title="{_esc(views[0][1])}"'
                    f'{style} data-v="{_attr_json(views)}">{_esc(src.text[sent.start:sent.end])}</span>'
                )
            pos = sent.end
        text_parts.append(_esc(src.text[pos:]))
        body = f'<div class="ab-text">{"".join(text_parts)}</div>'
        attrs = f'class="ab-source" id="{root_id}-src-{i}" data-index="{i}" data-used="{str(used[i]).lower()}"'
        if collapse_unused and not used[i]:
            out.append(f'<details {attrs}><summary class="ab-source-head">{head}</summary>{body}</details>')
        else:
            out.append(f'<div {attrs}><div class="ab-source-head">{head}</div>{body}</div>')

    foot = [f"strategy: {_esc(result.strategy)}"]
    models = (result.timing or {}).get("models") or {}
    if models:
        foot.append("scored by " + ", ".join(
            f"{_esc(m)} ({_esc(c.get('forward_passes', '?'))} passes, {_esc(c.get('forward_tokens', '?'))} tokens)"
            for m, c in models.items()))
    if isinstance((result.timing or {}).get("total_seconds"), (int, float)):
        foot.append(f"{result.timing['total_seconds']:.1f} s")
    if result.dropped_sources:
        foot.append("dropped to fit the context window: " + ", ".join(_esc(s.id) for s in result.dropped_sources))
    out.append(f'<div class="ab-foot">{" · ".join(foot)}</div>')
    if n_ans > 1:
        out.append(f"<script>{_JS % root_id}</script>")
    out.append("</div>")
    fragment = "".join(out)
    if not full_page:
        return fragment
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc('Citations: ' + result.question)}</title>"
            '<style>body{margin:16px;background:#f6f6f6}</style></head><body>\n'
            f"{fragment}\n</body></html>\n")


def save_html(result: AttributionResult, path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`to_html` as a standalone UTF-8 page to ``path``; returns the path."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(to_html(result, full_page=True, **kwargs), encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------- terminal
# C0/C1 controls except \t \n \r, and bidi overrides/isolates ("Trojan Source" reordering of the view)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _printable(text: str) -> str:
    """``text`` with control characters (ESC, ...) shown as U+FFFD: retrieved text is untrusted
    and must not drive the terminal (colours, title, cursor). One character for one: offsets hold."""
    return _CONTROL.sub("\ufffd", text)


def _rich_style(score: float, scale: float) -> str:
    colour = score_colour(score, scale)
    if not colour:
        return ""
    r, g, b = (int(x) for x in re.findall(r"\d+", colour))
    return f"black on #{r:02x}{g:02x}{b:02x}"


def support_line(verdicts: Decisions) -> str:
    """One line on whether the retrieved context supports the answer (the decision layer's verdict)."""
    if verdicts.supported is None:
        return "not checked (no context-support scores in this result)"
    lift = f"context lift {verdicts.lift:+.2f} nats, noise bound {verdicts.noise:.2f}"
    if not verdicts.supported:
        return f"NOT supported by the retrieved sources ({lift}): no source is cited"
    bad = [str(a.index + 1) for a in verdicts.answer_sentences if a.supported is False]
    return f"supported ({lift})" + (f"; answer sentence(s) {', '.join(bad)} unsupported, not cited" if bad else "")


def render_terminal(
    result: AttributionResult,
    console: Console | None = None,
    *,
    top_k: int = 5,
    show_sources: bool | None = None,
) -> None:
    """Print ``result`` with rich: the marked answer, the ranked citations, the used sources
    with each sentence highlighted by its score, and the cost.

    ``console`` defaults to a rich ``Console`` on standard output (colours only on a terminal;
    120 columns when the output is not a terminal). ``show_sources`` prints the used sources'
    highlighted text; ``None`` does so only when the console shows colours.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    con = console or Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    if show_sources is None:
        show_sources = con.color_system is not None
    con.print(Text.assemble(("Question: ", "bold"), _printable(result.question)))
    from .decisions import DEFAULT_RULE

    verdicts = result.decisions(DEFAULT_RULE.with_options(mark_top_k=top_k))  # one decision for the whole view
    marks = verdicts.marks
    answer, pos, answer_text = Text(), 0, _printable(result.answer)  # same length: offsets hold
    for j, sent in enumerate(result.answer_sentences):
        answer.append(answer_text[pos:sent.end])
        for n in sorted(marks.get(j, [])):
            answer.append(f"[{n}]", style="bold cyan")
        pos = sent.end
    answer.append(answer_text[pos:])
    con.print(Text.assemble(("Answer:   ", "bold"), answer))
    con.print(Text.assemble(("Support:  ", "bold"), support_line(verdicts)))

    flat = [s for row in result.sentence_scores for s in row if s.scored]
    scale = view_scale([s.score for s in flat])
    table = Table(title=Text(f"Citations ({result.strategy}; LOO score = drop in answer log-likelihood, nats)"),
                  title_justify="left", show_edge=False, expand=False)
    table.add_column("#", justify="right")
    table.add_column("source", overflow="fold", max_width=28)
    table.add_column("score", justify="right")
    table.add_column("share", justify="right")
    table.add_column("answer", justify="right")
    table.add_column("sentence", overflow="fold", ratio=1)
    for c in verdicts.citations[:top_k]:
        table.add_row(str(c.rank), Text(_printable(f"[{c.source_index + 1}] {c.source_id}")), f"{c.score:.3f}",
                      f"{c.share:.1%}", ",".join(str(j + 1) for j in c.answer_sentences) or "-",
                      Text(_printable(c.sentence), style=_rich_style(c.score, scale)))
    con.print(table)

    used = verdicts.used
    names = [_printable(f"[{i + 1}] {s.id}") + ("" if v.evidence != ("sufficiency",) else " (by sufficiency)")
             for i, (s, v) in enumerate(zip(result.sources, verdicts.sources)) if used[i]]
    con.print(Text.assemble(("Sources used: ", "bold"), ", ".join(names) or "none"))
    if show_sources:
        for i, src in enumerate(result.sources):
            if not used[i]:
                continue
            text, pos, src_text = Text(), 0, _printable(src.text)
            for k, sent in enumerate(src.sentences):
                sc = result.sentence_scores[i][k]
                text.append(src_text[pos:sent.start])
                style = "dim" if not sc.scored else _rich_style(sc.score, scale)
                text.append(src_text[sent.start:sent.end], style=style)
                pos = sent.end
            text.append(src_text[pos:])
            d = result.document_scores[i]
            con.print(Text.assemble((_printable(f"[{i + 1}] {src.id}"), "bold cyan"), f"  {d.score:+.3f} nats"))
            con.print(text)
    t = result.timing or {}
    if "total_seconds" in t:
        gen = f", generation {t['generation_seconds']:.1f}s" if t.get("generation_seconds") else ""
        work = "; ".join(f"{m}: {c['forward_passes']} passes, {c['forward_tokens']} tokens"
                         for m, c in (t.get("models") or {}).items())
        con.print(Text(f"Time: {t['total_seconds']:.1f}s total{gen} ({work})"))
