"""Interactive CPU: seconds per ``cite``-style attribution on one torch thread, per strategy.

The setting of issue #17's interactive goal: the embedded default scorer (SmolLM2-135M, the library's
default dtype: bfloat16 on a CPU that has it), 10 HotpotQA dev paragraphs per question, the gold answer
given (no generation), one torch thread. Every strategy attributes every question, interleaved per
question (all strategies on question 1, then question 2, ...; the order rotates by question) so the
load of a shared machine hits them alike; ``os.getloadavg`` is recorded at each attribution's start
and end.

Each finished (question, strategy) is one line of ``OUT/interactive_MODEL.records.jsonl``: a killed
run resumes after the last line. ``--report`` (or the end of a run) writes the summary
``OUT/interactive_MODEL.json`` and ``.md``; ``--readme`` rewrites the README block between
``<!-- interactive-table:start -->`` and ``<!-- interactive-table:end -->`` from that JSON.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python -m benchmarks.interactive --n 12
    python -m benchmarks.interactive --report --readme        # summary and README from the records only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import DEFAULT_HOTPOT, answer_digest, hotpot_examples, write_block

OUT = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = ("<!-- interactive-table:start -->", "<!-- interactive-table:end -->")

BASELINE = "hierarchical"  # today's default (``auto``)
STRATEGIES = ("hierarchical", "hierarchical-pruned", "masked", "masked-rescore")
# what each strategy's scores are: exact full-context LOO, or an approximation (labelled in the table)
EXACTNESS = {
    "hierarchical": "exact LOO",
    "hierarchical-pruned": "approximate: sentences LOO within the kept documents",
    "masked": "approximate: masked LOO",
    "masked-rescore": "approximate: masked LOO, top 8 sentences rescored exactly",
}
GOAL_SECONDS = 6.0
# the committed top-source result today (benchmarks.hotpot_top_document, default strategy, 20 questions,
# the model's own answers): the reference the goal names; this run's own baseline is BASELINE's rate
REFERENCE = OUT / "hotpot_top_document_smollm2-135m.json"


# ---------------------------------------------------------------------------- records
def records_path(model: str, out: Path = OUT) -> Path:
    return Path(out) / f"interactive_{model}.records.jsonl"


def summary_stem(model: str) -> str:
    return f"interactive_{model}"


def load_records(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def record_of(res, ex: dict, q_index: int, strategy: str, order: int, wall: float,
              load_start: float | None, load_end: float | None, threads: int, dtype: str,
              cpu: float | None = None) -> dict:
    """One (question, strategy) line: timings, forward work, the top document and sentence, machine load."""
    timing = res.timing
    loo = {"forward_passes": 0, "forward_tokens": 0, "seconds": 0.0}
    for cost in timing["models"].values():
        for k in loo:
            loo[k] += cost[k]
    support = timing["context_support"]
    ranked = sorted(range(len(res.sources)), key=lambda d: (-res.document_scores[d].score, d))
    top_doc = ranked[0]
    top = res.citations(top_k=1)
    top_sentence = [top[0].source_index, top[0].sentence_index] if top else None
    return {
        "id": ex["id"], "question_index": q_index, "strategy": strategy, "result_strategy": res.strategy,
        "order_in_question": order, "answer_sha256": answer_digest(res.answer),
        "n_sources": len(res.sources), "n_sentences": sum(len(s.sentences) for s in res.sources),
        "seconds": wall, "cpu_seconds": cpu, "total_seconds": timing["total_seconds"],
        "support_seconds": support["seconds"], "support_forward_tokens": support["forward_tokens"],
        "support_forward_passes": support["forward_passes"],
        "loo_seconds": loo["seconds"], "loo_forward_tokens": loo["forward_tokens"],
        "loo_forward_passes": loo["forward_passes"],
        "passes": timing.get("passes", {}),
        "top_document": top_doc, "top_document_scored_by": res.document_scores[top_doc].scored_by,
        "top_document_gold": top_doc in ex["gold_documents"],  # a flag: the labels stay in ../shared/data
        "top_sentence": top_sentence, "top_sentence_scored_by": top[0].scored_by if top else None,
        "top_sentence_gold": bool(top) and (top[0].source_index, top[0].sentence_index) in ex["gold_sentences"],
        "load_start": load_start, "load_end": load_end, "threads": threads, "dtype": dtype,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpus": os.cpu_count(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def run(args: argparse.Namespace) -> None:
    import torch

    from attribot_rag import Attributor

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    deadline = started + args.max_minutes * 60 if args.max_minutes else None
    path = records_path(args.model, Path(args.out))
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["id"], r["strategy"]) for r in load_records(path)}
    att = Attributor(args.model, dtype=args.dtype)
    dtype = str(att.target.loaded.model.dtype).replace("torch.", "")
    rows = hotpot_examples(args.data, args.n, args.offset)
    # one untimed warm-up per strategy on a small input: one-time costs (lazy imports, first kernels)
    # stay out of question 1's timings
    warm = rows[0]
    for s in args.strategies:
        att.attribute(warm["question"], warm["sources"][:2], warm["answer"], strategy=s)
    for qi, ex in enumerate(rows):
        todo = [s for s in args.strategies if (ex["id"], s) not in done]
        if not todo:
            continue
        if deadline is not None and time.monotonic() > deadline:
            print(f"stopping before question {qi + args.offset}: --max-minutes {args.max_minutes} passed", flush=True)
            break
        shift = (qi + args.offset) % len(args.strategies)
        order = list(args.strategies[shift:]) + list(args.strategies[:shift])
        for pos, s in enumerate(order):
            if (ex["id"], s) in done:
                continue
            load_start = _load()
            c0, t0 = time.process_time(), time.perf_counter()
            res = att.attribute(ex["question"], ex["sources"], ex["answer"], strategy=s)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rec = record_of(res, ex, qi + args.offset, s, pos, wall, load_start, _load(), args.threads, dtype, cpu)
            with path.open("a") as f:  # one line per finished attribution: a killed run resumes here
                f.write(json.dumps(rec) + "\n")
            print(f"q{qi + args.offset:>3} {s:<20} {wall:6.1f}s (cpu {cpu:6.1f}s, "
                  f"support {rec['support_seconds']:5.1f}s) "
                  f"top doc {rec['top_document']} gold={rec['top_document_gold']!s:<5} "
                  f"top sent gold={rec['top_sentence_gold']!s:<5} load {load_start:.2f}->{rec['load_end']:.2f}",
                  flush=True)


# ---------------------------------------------------------------------------- summary
def percentile(xs: Sequence[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), ``q`` in [0, 1]."""
    xs = sorted(xs)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _rate(xs: Sequence[bool]) -> float | None:
    return sum(map(bool, xs)) / len(xs) if xs else None


def _reference() -> dict | None:
    if not REFERENCE.exists():
        return None
    s = json.loads(REFERENCE.read_text())["summary"]
    return {"file": f"benchmarks/results/{REFERENCE.name}", "strategy": s["strategy"], "examples": s["examples"],
            "top1_document_gold_rate": s["top1_document_gold_rate"],
            "top1_sentence_gold_rate": s["top1_sentence_gold_rate"],
            "answers": "answers the model generated"}


def summarize(records: list[dict], model: str, strategies: Sequence[str] = STRATEGIES,
              baseline: str = BASELINE, goal_seconds: float = GOAL_SECONDS, reference: dict | None = None) -> dict:
    """Per-strategy statistics over the questions every strategy finished (a fair comparison)."""
    by_q: dict[str, dict[str, dict]] = {}
    for r in records:
        by_q.setdefault(r["id"], {})[r["strategy"]] = r
    complete = [q for q, per in by_q.items() if all(s in per for s in strategies)]
    complete.sort(key=lambda q: next(iter(by_q[q].values()))["question_index"])
    loads = [x for q in complete for r in by_q[q].values() for x in (r["load_start"], r["load_end"]) if x is not None]
    rows = []
    for s in strategies:
        rs = [by_q[q][s] for q in complete]
        secs = [r["seconds"] for r in rs]
        row: dict[str, Any] = {
            "strategy": s, "exactness": EXACTNESS.get(s, "?"), "approximate": EXACTNESS.get(s, "").startswith("approx"),
            "questions": len(rs),
            "median_seconds": _median(secs), "p90_seconds": percentile(secs, 0.9),
            "median_seconds_without_support": _median([r["seconds"] - r["support_seconds"] for r in rs]),
            # process CPU seconds (one thread): what a core of its own would take, less the load's share
            "median_cpu_seconds": _median([r["cpu_seconds"] for r in rs if r.get("cpu_seconds") is not None]),
            "median_support_seconds": _median([r["support_seconds"] for r in rs]),
            "median_loo_forward_tokens": _median([r["loo_forward_tokens"] for r in rs]),
            "median_forward_tokens": _median([r["loo_forward_tokens"] + r["support_forward_tokens"] for r in rs]),
            "top_document_gold_rate": _rate([r["top_document_gold"] for r in rs]),
            "top_sentence_gold_rate": _rate([r["top_sentence_gold"] for r in rs]),
        }
        ratios = [by_q[q][baseline]["seconds"] / by_q[q][s]["seconds"] for q in complete] if baseline in strategies \
            else []
        row["speedup_vs_baseline"] = {"median": _median(ratios), "min": min(ratios, default=None),
                                      "max": max(ratios, default=None)}
        rows.append(row)
    base = next((r for r in rows if r["strategy"] == baseline), None)
    for row in rows:
        med = row["median_seconds"]
        fast = med is not None and med <= goal_seconds
        gold_ok = (base is not None and row["top_document_gold_rate"] is not None
                   and row["top_document_gold_rate"] >= base["top_document_gold_rate"])
        row["goal"] = {
            "seconds_met": fast if med is not None else None,
            "seconds_over": None if med is None else max(med - goal_seconds, 0.0),
            "times_over": None if med is None else med / goal_seconds,
            "gold_rate_not_lower": gold_ok if med is not None else None,
            "met": bool(fast and gold_ok),
        }
    return {
        "model": model, "baseline": baseline, "strategies": list(strategies),
        "questions_complete": len(complete), "question_ids": complete,
        "questions_partial": len(by_q) - len(complete), "records": len(records),
        "dtype": next((r["dtype"] for r in records), None), "threads": next((r["threads"] for r in records), None),
        "omp_num_threads": next((r.get("omp_num_threads") for r in records), None),
        "omp_wait_policy": next((r.get("omp_wait_policy") for r in records), None),
        "cpus": next((r.get("cpus") for r in records), None),
        "load_1m": {"median": _median(loads), "min": min(loads, default=None), "max": max(loads, default=None)},
        "goal_seconds": goal_seconds, "rows": rows, "reference": reference,
    }


def _s(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def render_markdown(summary: dict) -> str:
    n = summary["questions_complete"]
    load = summary["load_1m"]
    lines = [
        f"{summary['model']} ({summary['dtype']}), {summary['threads']} torch thread, first {n} HotpotQA dev "
        f"questions (10 paragraphs, the gold answer given), every strategy on each question in turn; "
        f"1-minute load average {_s(load['median'], '.1f')} (median; {_s(load['min'], '.1f')}-"
        f"{_s(load['max'], '.1f')}) on {summary['cpus']} cores."
        + (f" {summary['questions_partial']} further question(s) only partly recorded are left out."
           if summary["questions_partial"] else ""),
        "",
        "| strategy | scores | median s | p90 s | median s w/o context support | median CPU s "
        "| forward tokens (median) "
        f"| x vs {summary['baseline']} (median, min-max) | top document gold | top sentence gold "
        f"| goal: median <= {summary['goal_seconds']:g} s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        sp = r["speedup_vs_baseline"]
        g = r["goal"]
        if g["seconds_met"] is None:
            goal = "-"
        elif g["seconds_met"]:
            goal = "met" + ("" if g["gold_rate_not_lower"] else " (gold rate lower)")
        else:
            goal = f"missed by {g['seconds_over']:.1f} s ({g['times_over']:.1f}x)"
        name = f"`{r['strategy']}`" + (" (approximate)" if r["approximate"] else "")
        lines.append(
            f"| {name} | {r['exactness']} | {_s(r['median_seconds'])} | {_s(r['p90_seconds'])} "
            f"| {_s(r['median_seconds_without_support'])} | {_s(r.get('median_cpu_seconds'))} "
            f"| {_s(r['median_forward_tokens'], ',.0f')} "
            f"| {_s(sp['median'], '.2f')} ({_s(sp['min'], '.2f')}-{_s(sp['max'], '.2f')}) "
            f"| {_pct(r['top_document_gold_rate'])} | {_pct(r['top_sentence_gold_rate'])} | {goal} |"
        )
    met = [r["strategy"] for r in summary["rows"] if r["goal"]["met"]]
    base = next((r for r in summary["rows"] if r["strategy"] == summary["baseline"]), None)
    lines.append("")
    goal_line = (f"Goal (median <= {summary['goal_seconds']:g} s of attribution, top-document gold rate no lower "
                 f"than `{summary['baseline']}`'s {_pct(base and base['top_document_gold_rate'])} on the same "
                 f"questions): ")
    if met:
        goal_line += "met by " + ", ".join(f"`{s}`" for s in met) + "."
    else:
        fastest = min((r for r in summary["rows"] if r["median_seconds"] is not None),
                      key=lambda r: r["median_seconds"], default=None)
        if fastest is None:
            goal_line += "missed (nothing recorded)."
        elif fastest["goal"]["seconds_met"]:
            goal_line += (f"missed; the fastest, `{fastest['strategy']}`, takes {fastest['median_seconds']:.1f} s but "
                          f"puts a gold document on top in only {_pct(fastest['top_document_gold_rate'])}.")
        else:
            goal_line += (f"missed; the fastest, `{fastest['strategy']}`, takes {fastest['median_seconds']:.1f} s, "
                          f"{fastest['goal']['times_over']:.1f}x the goal.")
    lines.append(goal_line)
    ref = summary.get("reference")
    if ref:
        lines.append("")
        lines.append(f"Reference: `benchmarks.hotpot_top_document` (`{ref['strategy']}`, {ref['examples']} questions, "
                     f"{ref['answers']}) puts a gold document on top in "
                     f"{_pct(ref['top1_document_gold_rate'])} and a gold sentence in "
                     f"{_pct(ref['top1_sentence_gold_rate'])}.")
    return "\n".join(lines)


def report(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    records = load_records(records_path(args.model, out))
    summary = summarize(records, args.model, args.strategies, reference=_reference())
    markdown = render_markdown(summary)
    print(markdown)
    stem = summary_stem(args.model)
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown + "\n")
    if args.readme:
        write_readme(out, model=args.model)
    return summary


def readme_block(out: Path = OUT, model: str = "smollm2-135m") -> str:
    """The README's interactive block, rendered from the committed summary JSON."""
    path = Path(out) / f"{summary_stem(model)}.json"
    if not path.exists():
        return "*(no interactive run committed yet)*"
    return render_markdown(json.loads(path.read_text()))


def write_readme(out: Path = OUT, readme: Path = README, model: str = "smollm2-135m") -> None:
    write_block(readme, MARKERS, readme_block(out, model))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_HOTPOT))
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default=None, help="default: the library's (bf16 on a CPU that has it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="start no new question after this many minutes (the summary says how many are covered)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--report", action="store_true", help="only summarize the committed records")
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's interactive block")
    args = ap.parse_args(argv)
    if BASELINE not in args.strategies:
        ap.error(f"--strategies must include the baseline {BASELINE!r}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.report:
        print(f"{platform.processor() or platform.machine()}, load {_load()}", flush=True)
        run(args)
    report(args)


if __name__ == "__main__":
    main()
