"""benchmarks.interactive: records, summary and table on fake records; the README block is the committed JSON's."""

import json
from pathlib import Path

import pytest

from benchmarks import interactive as ib

STRATS = ("hierarchical", "hierarchical-pruned", "masked", "masked-rescore")


def _rec(q, strategy, seconds, support=1.0, doc_gold=True, sent_gold=False, tokens=1000, load=(2.0, 3.0)):
    return {
        "id": f"q{q}", "question_index": q, "strategy": strategy, "seconds": seconds, "cpu_seconds": seconds / 2,
        "support_seconds": support,
        "support_forward_tokens": 100, "loo_forward_tokens": tokens, "top_document_gold": doc_gold,
        "top_sentence_gold": sent_gold, "load_start": load[0], "load_end": load[1], "threads": 1,
        "dtype": "bfloat16", "cpus": 2, "omp_num_threads": "1", "omp_wait_policy": "PASSIVE",
    }


def _records():
    recs = []
    for q, base in enumerate([40.0, 60.0, 80.0]):
        recs += [
            _rec(q, "hierarchical", base, doc_gold=True, sent_gold=q == 0, tokens=20000),
            _rec(q, "hierarchical-pruned", base / 4, doc_gold=True, tokens=8000),
            _rec(q, "masked", 5.0, doc_gold=q != 2, tokens=3000),
            _rec(q, "masked-rescore", base / 8, doc_gold=True, sent_gold=True, tokens=5000),
        ]
    recs.append(_rec(3, "hierarchical", 99.0))  # a question only partly recorded: left out
    return recs


def test_summary_statistics_on_fake_records():
    s = ib.summarize(_records(), "m", STRATS, reference=None)
    assert s["questions_complete"] == 3 and s["questions_partial"] == 1 and s["records"] == 13
    assert s["question_ids"] == ["q0", "q1", "q2"]
    rows = {r["strategy"]: r for r in s["rows"]}
    h = rows["hierarchical"]
    assert h["median_seconds"] == 60.0 and h["p90_seconds"] == pytest.approx(76.0)
    assert h["median_seconds_without_support"] == 59.0 and h["median_cpu_seconds"] == 30.0
    assert h["median_forward_tokens"] == 20100 and h["median_loo_forward_tokens"] == 20000
    assert h["top_document_gold_rate"] == 1.0 and h["top_sentence_gold_rate"] == pytest.approx(1 / 3)
    assert h["speedup_vs_baseline"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert not h["approximate"] and rows["masked"]["approximate"] and rows["hierarchical-pruned"]["approximate"]
    m = rows["masked"]
    assert m["speedup_vs_baseline"] == {"median": 12.0, "min": 8.0, "max": 16.0}
    assert m["goal"]["seconds_met"] and not m["goal"]["gold_rate_not_lower"] and not m["goal"]["met"]
    r = rows["masked-rescore"]
    assert r["median_seconds"] == 7.5 and r["goal"]["seconds_over"] == pytest.approx(1.5)
    assert not r["goal"]["met"]
    p = rows["hierarchical-pruned"]
    assert p["speedup_vs_baseline"]["median"] == 4.0 and p["goal"]["times_over"] == pytest.approx(2.5)
    assert s["load_1m"] == {"median": 2.5, "min": 2.0, "max": 3.0}


def test_goal_met_when_fast_and_gold_rate_holds():
    recs = [r for r in _records() if not (r["strategy"] == "masked" and r["id"] == "q2")]
    recs.append(_rec(2, "masked", 5.5, doc_gold=True))
    s = ib.summarize(recs, "m", STRATS)
    rows = {r["strategy"]: r for r in s["rows"]}
    assert rows["masked"]["goal"]["met"]
    md = ib.render_markdown(s)
    assert "met by `masked`." in md


def test_render_markdown_labels_approximate_and_goal_lines():
    ref = {"strategy": "hierarchical", "examples": 20, "answers": "answers the model generated",
           "top1_document_gold_rate": 0.75, "top1_sentence_gold_rate": 0.4}
    md = ib.render_markdown(ib.summarize(_records(), "m", STRATS, reference=ref))
    lines = md.splitlines()
    table = [ln for ln in lines if ln.startswith("| `")]
    assert len(table) == 4
    assert table[0].startswith("| `hierarchical` | exact LOO | 60.0 | 76.0 | 59.0 | 30.0 | 20,100 "
                               "| 1.00 (1.00-1.00) | 100% |")
    assert all("(approximate)" in ln for ln in table[1:]) and "(approximate)" not in table[0]
    assert "missed by 54.0 s (10.0x)" in table[0]
    assert "| met (gold rate lower) |" in table[2]
    assert "Goal (median <= 6 s" in md and (
        "missed; the fastest, `masked`, takes 5.0 s but puts a gold document on top in only 67%" in md)
    assert "further question(s) only partly recorded" in md
    assert "puts a gold document on top in 75%" in md


def test_empty_records_render():
    s = ib.summarize([], "m", STRATS)
    assert s["questions_complete"] == 0
    assert "| - |" in ib.render_markdown(s)


def test_record_of_on_a_tiny_model(tiny, sources):
    from attribot_rag import Attributor

    res = Attributor(tiny, strategy="hierarchical").attribute("Who built the tower?", sources,
                                                              "Gustave Eiffel built it in 1889.")
    ex = {"id": "x", "gold_documents": {1}, "gold_sentences": {(1, 1)}}
    rec = ib.record_of(res, ex, 0, "hierarchical", 0, 1.5, 1.0, 1.1, 1, "float32")
    json.dumps(rec)  # a JSON line
    assert rec["seconds"] == 1.5 and rec["n_sources"] == 3 and rec["n_sentences"] == 6
    assert rec["loo_forward_tokens"] > 0 and rec["support_forward_tokens"] > 0 and "documents" in rec["passes"]
    assert rec["top_document"] == max(range(3), key=lambda d: (res.document_scores[d].score, -d))
    assert rec["top_document_gold"] == (rec["top_document"] == 1)
    assert "gold_documents" not in rec and "gold_sentences" not in rec  # the data's labels stay out of results


def test_write_readme_replaces_only_the_block(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    summary = ib.summarize(_records(), "m", STRATS)
    (out / "interactive_m.json").write_text(json.dumps(summary))
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{ib.MARKERS[0]}\nOLD-BLOCK\n{ib.MARKERS[1]}\nafter\n")
    ib.write_readme(out, readme, model="m")
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "OLD-BLOCK" not in text
    assert ib.render_markdown(summary) in text


def test_readme_interactive_block_is_generated_from_the_committed_json():
    if not (ib.OUT / f"{ib.summary_stem('smollm2-135m')}.json").exists():
        pytest.skip("no interactive run committed yet")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = readme.index(ib.MARKERS[0]) + len(ib.MARKERS[0]), readme.index(ib.MARKERS[1])
    assert readme[start:end].strip() == ib.readme_block().strip()
