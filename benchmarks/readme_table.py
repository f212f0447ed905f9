"""The README's faithfulness table, generated from the committed result JSON (never typed by hand).

    python -m benchmarks.readme_table --write   # rewrite the block between the markers in README.md
    python -m benchmarks.readme_table --check   # exit 1 when README.md and the JSON disagree

Each setting of issue 5 has its own block, between ``<!-- faithfulness-table:NAME:start -->`` and
``<!-- faithfulness-table:NAME:end -->`` (NAME from ``SETTINGS``). A dataset whose run is missing is shown as
not run; a run with fewer examples than it asked for says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import splice_block
from benchmarks.metrics import dtype_effect_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = {  # README block name -> (target, proxy)
    "same-family": ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"),
    "cross-tokenizer": ("qwen2.5-coder-0.5b", "smollm2-135m"),
}
DATASETS = (("hotpotqa", "HotpotQA"), ("squad", "SQuAD"))
TABLE_METRICS = (("pearson", "Pearson"), ("spearman", "Spearman"), ("outlier_ap", "outlier mAP"))
METRICS = TABLE_METRICS + (("top1", "top-1"),)  # Pareto verdicts; the full tables are in faithfulness.md


def markers(setting: str) -> tuple[str, str]:
    """The README comments that open and close one setting's block."""
    return f"<!-- faithfulness-table:{setting}:start -->", f"<!-- faithfulness-table:{setting}:end -->"


def _paths(target: str, proxy: str | None, results: Path) -> dict[str, Path]:
    """The result JSON files present for one (target, proxy) setting, by dataset key."""
    stem = (f"{target}" + (f"_proxy_{proxy}" if proxy else "")).replace("/", "_")
    paths = {key: results / f"faithfulness_{key}_{stem}.json" for key, _ in DATASETS}
    return {key: path for key, path in paths.items() if path.is_file()}


def load(target: str, proxy: str | None, results: Path = RESULTS) -> dict[str, dict]:
    """The result JSON of each dataset run for one (target, proxy) setting, by dataset key."""
    out = {key: json.loads(path.read_text()) for key, path in _paths(target, proxy, results).items()}
    if not out:
        stem = f"{target}" + (f"_proxy_{proxy}" if proxy else "")
        raise FileNotFoundError(f"no faithfulness_*_{stem}.json in {results}: run benchmarks.faithfulness for "
                                "this setting first")
    return out


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"  # x != x: NaN


def render(runs: dict[str, dict]) -> str:
    """Markdown: one table (methods x datasets), the run's scale, and where the default sits."""
    first = next(iter(runs.values()))
    keys = list(first["methods"])
    default = first["default_method"]
    shown = [(ds, name) for ds, name in DATASETS if ds in runs]
    head = ["method"]
    for _, name in shown:
        head += [f"{name} {label}" for _, label in TABLE_METRICS] + [f"{name} s / example"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    elsewhere: dict[str, str] = {}  # method label -> the CPU that timed it, when not the run's own
    for k in keys:
        label = first["methods"][k]["label"] + (" **(default)**" if k == default else "")
        fewer = [f"{runs[ds]['methods'][k]['examples']} of {runs[ds]['examples']} {name}" for ds, name in shown
                 if k in runs[ds]["methods"] and 0 < runs[ds]["methods"][k]["examples"] < runs[ds]["examples"]
                 and k != "naive-exact"]  # naive is timed on a subset by design (said below the table)
        if fewer:
            label += f" ({', '.join(fewer)} examples)"
        cells = [label]
        for ds, _ in shown:
            m = runs[ds]["methods"].get(k)
            if m is None:
                cells += ["n/a"] * (len(TABLE_METRICS) + 1)
                continue
            cpu = _timed_on(m)
            mark = ""
            if cpu and cpu != runs[ds]["machine"]["cpu"]:
                mark, elsewhere[m["label"]] = " †", cpu
            cells += [_num(m[metric]["mean"]) for metric, _ in TABLE_METRICS] + [_num(m["seconds"], 1) + mark]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if elsewhere:
        cpus = sorted(set(elsewhere.values()))
        lines.append(f"† timed on another machine ({', '.join(cpus)}) than the other rows "
                     f"({first['machine']['cpu']}), with other jobs and thread counts: compare its seconds only "
                     "with rows timed on the same machine (e.g. the same-machine timing in *Faster than the "
                     "default?*).")
        lines.append("")
    for ds, name in DATASETS:
        if ds not in runs:
            lines.append(f"- **{name}**: not run yet for this setting.")
            continue
        r = runs[ds]
        minutes = r["compute_seconds"] / 60
        requested = r.get("examples_requested", r["examples"])
        scale = (f"{r['examples']} dev examples" if r["examples"] >= requested else
                 f"**{r['examples']} of the {requested} dev examples asked for** (partial run; it resumes)")
        verdicts = []
        for metric, label in METRICS:
            v = r["pareto"]["by_metric"][metric]["default"]
            by = ", ".join(f"*{r['methods'][d]['label']}*" for d in v["dominated_by"])
            verdicts.append(f"{label}: " + ("on the front" if v["on_front"] else f"dominated by {by}"))
        lines.append(
            f"- **{name}**: {scale}, {r['mean_prompt_tokens']:.0f} prompt tokens and "
            f"{r['mean_sentences']:.1f} context sentences on average; {minutes:.0f} min of compute. "
            f"Default (*{first['methods'][default]['label']}*) against the Pareto front of time and each metric: "
            + "; ".join(verdicts) + ". " + _key_figures(r, default)
        )
    return "\n".join(lines)


def _timed_on(method: dict) -> str | None:
    """The CPU that timed most of a method's examples (``None`` for results older than the field)."""
    counts = method.get("timed_on") or {}
    return max(counts, key=counts.get) if counts else None


def _key_figures(r: dict, default: str) -> str:
    """The comparisons the README's prose leans on, computed from the run."""
    ms, d = r["methods"], r["methods"][default]
    n = d["speedup_examples"]
    timed = f"naive timed on {n} example{'s' if n != 1 else ''}; the ratio is taken on {'it' if n == 1 else 'them'}"
    out = [f"The default takes {d['attribution_over_generation']:.1f}x the target's generation time and is "
           f"{d['speedup_vs_naive']:.1f}x faster than naive exact LOO ({timed})."]
    cc = max((k for k in ms if ms[k]["kind"] == "contextcite"), key=lambda k: ms[k]["seconds"], default=None)
    if cc:
        c = ms[cc]
        out.append(f"*{c['label']}* takes {c['seconds'] / d['seconds']:.1f}x the default's time for Pearson "
                   f"{c['pearson']['mean']:.3f} vs {d['pearson']['mean']:.3f} and outlier mAP "
                   f"{c['outlier_ap']['mean']:.3f} vs {d['outlier_ap']['mean']:.3f}.")
    if "cached-batched" in ms and "proxy" in ms:
        b, p = ms["cached-batched"], ms["proxy"]
        out.append(f"The bf16 noise floor (cached+batched exact LOO against fp32 gold): Pearson "
                   f"{b['pearson']['mean']:.3f}, Spearman {b['spearman']['mean']:.3f}. The proxy's own sentence "
                   f"scores: Spearman {p['spearman']['mean']:.3f}, {b['seconds'] / p['seconds']:.1f}x faster "
                   "than the target's.")
    if r.get("dtype_effect"):
        out.append(dtype_effect_text(r))
    return " ".join(out)


# ----------------------------------------------------------------------- issue #17: speed goals on one machine
TIMING = "timing_same_machine"  # subfolder: the same-machine timing runs (naive, default, new methods)
GOAL_SPEEDUP = 20.0  # >= 20x faster than naive exact LOO ...
# ... at outlier mAP no lower than the default's, and attribution <= the answer's generation time


def load_goals(target: str, proxy: str | None, results: Path = RESULTS) -> tuple[dict, dict]:
    """The faithfulness runs and the same-machine timing runs of one setting, by dataset key (``{}``: none yet)."""
    timing = results / TIMING
    return load(target, proxy, results), (load(target, proxy, timing) if _paths(target, proxy, timing) else {})


def render_goals(main_runs: dict[str, dict], timing: dict[str, dict]) -> str:
    """Speed-ups over naive exact LOO and time over generation, every row timed on one machine, beside
    each method's outlier mAP over all the faithfulness run's examples; the issue's goals checked."""
    lines: list[str] = []
    for ds, name in DATASETS:
        if ds not in timing:
            lines += [f"**{name}**: no same-machine timing run yet.", ""]
            continue
        t, r = timing[ds], main_runs.get(ds)
        default = t["default_method"]
        full = r["methods"] if r else {}
        d_ap = full.get(default, {}).get("outlier_ap", {}).get("mean", float("nan"))
        threads = t["machine"]["torch_threads"]
        lines += [
            f"**{name}** ({t['examples']} example{'' if t['examples'] == 1 else 's'} timed on {t['machine']['cpu']}, "
            f"{threads} torch "
            f"thread{'' if threads == 1 else 's'}, mean 1-min load {_num(t['mean_load_1m'], 1)} on "
            f"{t['machine']['cpu_count']} cores; generation {t['generation_seconds']:.1f} s / example there; "
            f"outlier mAP over the faithfulness run's examples, {r['examples'] if r else 'n/a'} in all):",
            "",
            "| method | outlier mAP (examples) | s / example | CPU s / example | forward tokens / example | x vs naive "
            "(mean; min-max) | attribution / generation | >= 20x at mAP >= default | <= generation |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k, m in t["methods"].items():
            ap = full.get(k, {}).get("outlier_ap", {}).get("mean", float("nan"))
            n_ap = full.get(k, {}).get("examples")
            sp, spread, gen = m["speedup_vs_naive"], m.get("speedup_spread"), m["attribution_over_generation"]
            toks = _forward_tokens(m)
            x = _num(sp, 1) + (f" ({spread['min']:.1f}-{spread['max']:.1f})" if spread else "")
            fast = sp >= GOAL_SPEEDUP
            good = ap == ap and d_ap == d_ap and round(ap, 3) >= round(d_ap, 3)  # x == x: not NaN
            goal1 = "yes" if fast and good else ("no: " + " and ".join(
                ([f"{sp:.1f}x" if sp == sp else "not timed"] if not fast else [])
                + ([f"mAP {_num(ap)} < {_num(d_ap)}"] if not good else [])))
            goal2 = "yes" if gen <= 1 else f"no: {gen:.1f}x"
            label = m["label"] + (" **(default)**" if k == default else "")
            n_ap = n_ap if n_ap is not None else "not in the faithfulness run"
            lines.append(f"| {label} | {_num(ap)} ({n_ap}) | {_num(m['seconds'], 1)} | {_num(m['cpu_seconds'], 1)} | "
                         f"{toks:,.0f} | {x} | {_num(gen, 1)} | {goal1} | {goal2} |")
        budget = _exact_budget(t)
        if budget:
            lines += ["", budget]
        lines.append("")
    return "\n".join(lines).rstrip()


def _forward_tokens(method: dict) -> float:
    """A method's forward tokens per example, over every model it ran."""
    return sum(v["forward_tokens"] for v in method["models"].values())


def _exact_budget(t: dict) -> str:
    """What 20x over naive leaves an exact method: naive's forward tokens / 20 against the tokens the
    default spends per span it scores exactly (each ablation recomputes everything after its span)."""
    naive = next((m for m in t["methods"].values() if m.get("kind") == "naive"), None)
    key = t["default_method"]
    per_span = [sum(p["forward_tokens"] for p in run["extra"]["passes"].values())
                / (e["documents"] + run["extra"]["n_scored"])
                for e in t["per_example"] if (run := e["methods"].get(key)) and run.get("extra", {}).get("passes")]
    if naive is None or not per_span:
        return ""
    budget = _forward_tokens(naive) / GOAL_SPEEDUP
    cost = sum(per_span) / len(per_span)
    fits = [m for m in t["methods"].values() if _forward_tokens(m) <= budget]
    return (f"Cost model: {GOAL_SPEEDUP:.0f}x over naive leaves {budget:,.0f} forward tokens per example "
            f"(naive's {_forward_tokens(naive):,.0f} / {GOAL_SPEEDUP:.0f}); exact LOO costs the default about "
            f"{cost:,.0f} tokens per document or sentence it scores (each ablation recomputes the prompt after its "
            f"span), so an exact method could score about {budget / cost:.0f} spans of the "
            f"{t['mean_sentences']:.0f} sentences in {t['mean_documents']:.0f} documents here. Within that budget: "
            + (", ".join(f"*{m['label']}* ({_forward_tokens(m):,.0f})" for m in fits) if fits else "no method")
            + ".")


GOALS_BLOCKS = {  # README block name -> the setting whose same-machine timing it shows
    "speed-goals": "cross-tokenizer",
    "speed-goals-same-family": "same-family",
}


def splice(readme: str, block: str, setting: str) -> str:
    """README text with the setting's marked block replaced by ``block``."""
    return splice_block(readme, *markers(setting), block)


def _has_results(setting: str, results: Path) -> bool:
    return bool(_paths(*SETTINGS[setting], results=results))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", action="append", choices=list(SETTINGS),
                    help="a block to render (repeatable; default: every setting)")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--results", default=str(RESULTS), help="folder of the result JSON")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the README blocks")
    mode.add_argument("--check", action="store_true", help="exit 1 when a README block is stale")
    args = ap.parse_args(argv)
    results = Path(args.results)
    readme_path = Path(args.readme)
    readme = readme_path.read_text() if (args.write or args.check) else ""
    # Default: the blocks the README holds (write/check), or every setting that has results (print).
    names = args.setting or [n for n in SETTINGS if (markers(n)[0] in readme if readme else _has_results(n, results))]
    if not names:
        raise SystemExit(f"no faithfulness-table block in {readme_path}" if readme else f"no results in {results}")
    blocks = {name: render(load(*SETTINGS[name], results=results)) for name in names}
    for block, setting in GOALS_BLOCKS.items():  # each setting's same-machine timing, where the README has it
        if readme and markers(block)[0] in readme:
            blocks[block] = render_goals(*load_goals(*SETTINGS[setting], results=results))
    if not (args.write or args.check):
        print("\n\n".join(f"{name}:\n{block}" for name, block in blocks.items()))
        return 0
    new = readme
    for name, block in blocks.items():
        new = splice(new, block, name)
    if args.write:
        readme_path.write_text(new)
    elif args.check:
        if new != readme:
            print(f"{readme_path}: a faithfulness table differs from the result JSON; run "
                  "python -m benchmarks.readme_table --write", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
