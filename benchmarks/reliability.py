"""The README's Reliability table: run the adversarial suite, time overflow selection, write JSON, render.

    python -m benchmarks.reliability            # run tests/test_adversarial.py + the overflow timing -> JSON
    python -m benchmarks.reliability --write    # also rewrite the README block from the JSON
    python -m benchmarks.reliability --check    # exit 1 when README.md and the committed JSON disagree
    python -m benchmarks.reliability --render-only --write   # the README block from the committed JSON

The suite's tests carry their case label (``@case(kind, what)`` in ``tests/test_adversarial.py``);
each collected test (each parameter of a parametrized one) is one row of the JSON, with its outcome.
The overflow timing chooses which of N tiny documents to drop for SmolLM2-135M's tokenizer and
8,192-token window (the real window the slow path was reported with), and times the round-1 loop
(one re-encoding of the whole prompt per dropped source) for the smaller N as the baseline. Times
are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RESULT = RESULTS / "reliability.json"
SUITE = "tests/test_adversarial.py"
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"
OVERFLOW_SIZES = (800, 1600, 3200, 5000)
BASELINE_SIZES = (800, 1600)  # the round-1 loop is quadratic: 3,200 and 5,000 took 77 s and 213 s
KINDS = {  # a case's kind -> what "handled cleanly" means for it (the table's rows)
    "input": "bad input: a one-line typed error, non-zero exit",
    "record": "bad batch record: an error row, the job finishes",
    "fault": "fault during a batch job: nothing lost, the rerun completes",
    "holds": "kept from round 1",
}


# ------------------------------------------------------------------------------------------ the suite
class _Collector:
    """A pytest plugin: each collected test's case label, then its outcome."""

    def __init__(self) -> None:
        self.cases: dict[str, dict[str, Any]] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            label = getattr(getattr(item, "function", None), "reliability", None)
            if label is None:
                continue
            param = getattr(getattr(item, "callspec", None), "id", None)
            what = label["what"] + (f" [{param}]" if param else "")
            self.cases[item.nodeid] = {"test": item.nodeid, "kind": label["kind"], "what": what,
                                       "files": label["files"], "outcome": "not run"}

    def pytest_runtest_logreport(self, report) -> None:
        row = self.cases.get(report.nodeid)
        if row is None:
            return
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
            row["outcome"] = outcome
        elif report.outcome == "failed":  # a teardown error
            row["outcome"] = "failed"


def collect_cases(run: bool) -> list[dict[str, Any]]:
    """The suite's cases (``run``: with their outcomes; else only collected)."""
    import pytest

    collector = _Collector()
    args = [str(ROOT / SUITE), "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT)]
    code = pytest.main(args + ([] if run else ["--collect-only"]), plugins=[collector])
    if code not in (0, 1):  # 1: some test failed (recorded as such); anything else: the run itself broke
        raise SystemExit(f"pytest exited with {code}")
    return list(collector.cases.values())


# ------------------------------------------------------------------------------------------ overflow
def _documents(n: int) -> list[dict[str, Any]]:
    return [{"id": f"d{i}", "text": f"Document {i}: the lighthouse on Skarvøy was first lit in 1897.",
             "score": (i * 7919) % 1000 / 1000} for i in range(n)]


def _round1_loop(att, question: str, srcs: list, answer: str, window: int) -> int:
    """The round-1 ``drop_last`` loop: re-encode the whole prompt after each dropped source."""
    kept = list(srcs)
    answer_len = len(att.target.builder.encode_answer(answer).ids)
    while len(att.target.builder.encode_prompt(question, kept)) + answer_len > window:
        kept.pop()
    return len(srcs) - len(kept)


def time_overflow(model: str) -> dict[str, Any]:
    """Seconds to choose the sources to drop, for each size and policy (and the round-1 loop)."""
    from attribot_rag import Attributor, load_model
    from attribot_rag.spans import as_sources, split_source

    loaded = load_model(model, device="cpu", dtype="fp32")
    att = Attributor(loaded)
    window = loaded.context_window
    question, answer = "When was the lighthouse on Skarvøy first lit?", "It was first lit in 1897."
    builder = att.target.builder
    real = builder.encode_prompt
    rows, baseline = [], []
    for n in OVERFLOW_SIZES:
        srcs = [split_source(s) for s in as_sources(_documents(n))]  # split once, as attribute() does before _fit
        for policy in ("drop_last", "drop_lowest_score"):
            calls = [0]

            def counting(*args, _calls=calls, **kwargs):
                _calls[0] += 1
                return real(*args, **kwargs)

            builder.encode_prompt = counting
            try:
                started = time.perf_counter()
                kept, dropped = att._fit(question, (), srcs, answer, 128, att.strategy, policy, {})
                seconds = time.perf_counter() - started
            finally:
                del builder.encode_prompt
            rows.append({"documents": n, "policy": policy, "seconds": round(seconds, 3), "kept": len(kept),
                         "dropped": len(dropped), "full_encodings": calls[0]})
            print(f"overflow {policy:<17} {n:>5} documents: {seconds:6.2f} s, {len(dropped)} dropped, "
                  f"{calls[0]} full encodings", file=sys.stderr)
        if n in BASELINE_SIZES:
            started = time.perf_counter()
            dropped_round1 = _round1_loop(att, question, srcs, answer, window)
            seconds = time.perf_counter() - started
            assert dropped_round1 == next(r["dropped"] for r in rows if r["documents"] == n
                                          and r["policy"] == "drop_last"), "the round-1 loop chose otherwise"
            baseline.append({"documents": n, "policy": "drop_last", "seconds": round(seconds, 3),
                             "dropped": dropped_round1})
            print(f"round-1 loop drop_last     {n:>5} documents: {seconds:6.2f} s", file=sys.stderr)
    return {"model": model, "window": window, "rows": rows, "round1_loop": baseline}


# ------------------------------------------------------------------------------------------ JSON
def summarise(cases: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out = {}
    for kind in KINDS:
        rows = [c for c in cases if c["kind"] == kind]
        ok = [c for c in rows if c["outcome"] == "passed"]
        out[kind] = {"tried": len(rows), "handled": len(ok), "files_checked": sum(c["files"] for c in rows),
                     "nothing_lost": sum(c["files"] for c in ok),
                     "expected_failures": sum(c["outcome"] == "xfailed" for c in rows)}
    return out


def run(model: str) -> dict[str, Any]:
    started = datetime.now(timezone.utc)
    cases = collect_cases(run=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other jobs slow the timing: say so
    overflow = time_overflow(model)
    import torch

    return {
        "suite": SUITE,
        "command": " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
        + (" " if "OMP_NUM_THREADS" in os.environ else "") + "python -m benchmarks.reliability --write",
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_1m_before_timing": load},
        "summary": summarise(cases),
        "cases": cases,
        "overflow": overflow,
    }


# ------------------------------------------------------------------------------------------ README
def _n(x: int) -> str:
    return f"{x:,}"


def render(data: dict[str, Any]) -> str:
    """The README block (without the markers): the table, the overflow figures, the cases."""
    s = data["summary"]
    lines = ["| What was tried | Tried | Handled cleanly | Nothing lost (cases that check the user's files and "
             "records) |", "|---|---:|---:|---:|"]
    for kind, text in KINDS.items():
        r = s[kind]
        lost = f"{r['nothing_lost']} of {r['files_checked']}" if r["files_checked"] else "n/a"
        xf = f" ({r['expected_failures']} known open, below)" if r["expected_failures"] else ""
        lines.append(f"| {text} | {r['tried']} | {r['handled']}{xf} | {lost} |")
    tot = {k: sum(r[k] for r in s.values()) for k in ("tried", "handled", "files_checked", "nothing_lost")}
    lines.append(f"| **all** | **{tot['tried']}** | **{tot['handled']}** | **{tot['nothing_lost']} of "
                 f"{tot['files_checked']}** |")
    o = data["overflow"]
    by = {(r["documents"], r["policy"]): r for r in o["rows"]}
    last = max(OVERFLOW_SIZES)
    sizes = " / ".join(_n(n) for n in OVERFLOW_SIZES)
    secs = " / ".join(f"{by[(n, 'drop_last')]['seconds']:.2f}" for n in OVERFLOW_SIZES)
    encs = max(r["full_encodings"] for r in o["rows"])
    base = "; ".join(f"{_n(b['documents'])} documents {b['seconds']:.1f} s" for b in o["round1_loop"])
    lines += [
        "",
        f"Overflow selection (which sources `overflow=\"drop_last\"` drops; {o['model']}'s tokenizer and "
        f"{_n(o['window'])}-token window): {sizes} tiny documents in {secs} s, "
        f"**{by[(last, 'drop_last')]['seconds']:.2f} s for {_n(last)}** "
        f"({by[(last, 'drop_lowest_score')]['seconds']:.2f} s with `drop_lowest_score`), at most {encs} "
        f"encodings of the whole prompt. The round-1 loop, one re-encoding per dropped source, on the same "
        f"machine: {base}.",
        "",
        f"Measured {data['date']} on {data['machine']['cpus']} CPU cores"
        + (f", load average {data['machine']['load_1m_before_timing']:.1f} when the timing started"
           if data["machine"].get("load_1m_before_timing") is not None else "")
        + f" (`{data['command']}`, `benchmarks/results/reliability.json`).",
        "",
        "<details><summary>Every case</summary>",
        "",
    ]
    for kind, text in KINDS.items():
        lines.append(f"- **{text}**")
        for c in data["cases"]:
            if c["kind"] == kind:
                mark = {"passed": "ok", "xfailed": "**open**"}.get(c["outcome"], f"**{c['outcome']}**")
                lines.append(f"  - {mark}: {c['what'].replace('|', '/')}")
    lines += ["", "</details>"]
    return "\n".join(lines)


def splice(readme: str, block: str) -> str:
    head, found, rest = readme.partition(START)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="whose tokenizer and window the overflow timing uses")
    ap.add_argument("--write", action="store_true", help="rewrite the README block")
    ap.add_argument("--check", action="store_true", help="exit 1 when the README block is not the JSON's")
    ap.add_argument("--render-only", action="store_true", help="use the committed JSON; run nothing")
    args = ap.parse_args(argv)
    if not (args.check or args.render_only):
        data = run(args.model)
        RESULT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {RESULT.relative_to(ROOT)}", file=sys.stderr)
    data = json.loads(RESULT.read_text(encoding="utf-8"))
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    new = splice(readme, render(data))
    if args.check:
        if new != readme:
            print("README.md's Reliability block differs from benchmarks/results/reliability.json: run "
                  "python -m benchmarks.reliability --render-only --write", file=sys.stderr)
            return 1
        return 0
    if args.write and new != readme:
        readme_path.write_text(new, encoding="utf-8")
        print("README.md: Reliability block rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
