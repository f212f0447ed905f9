"""The README's faithfulness table, generated from the committed result JSON (never typed by hand).

    python -m benchmarks.readme_table --write   # rewrite the block between the markers in README.md
    python -m benchmarks.readme_table --check   # exit 1 when README.md and the JSON disagree

The block sits between ``<!-- faithfulness-table:start -->`` and ``<!-- faithfulness-table:end -->``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- faithfulness-table:start -->", "<!-- faithfulness-table:end -->"
DATASETS = (("hotpotqa", "HotpotQA"), ("squad", "SQuAD"))
TABLE_METRICS = (("pearson", "Pearson"), ("spearman", "Spearman"), ("outlier_ap", "outlier mAP"))
METRICS = TABLE_METRICS + (("top1", "top-1"),)  # Pareto verdicts; the full tables are in faithfulness.md


def load(target: str, proxy: str | None, results: Path = RESULTS) -> dict[str, dict]:
    """The result JSON of each dataset for one (target, proxy) setting, by dataset key."""
    out = {}
    for key, _ in DATASETS:
        stem = f"faithfulness_{key}_{target}" + (f"_proxy_{proxy}" if proxy else "")
        path = results / f"{stem.replace('/', '_')}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run benchmarks.faithfulness for this setting first")
        out[key] = json.loads(path.read_text())
    return out


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def render(runs: dict[str, dict]) -> str:
    """Markdown: one table (methods x datasets), the run's scale, and where the default sits."""
    first = next(iter(runs.values()))
    keys = list(first["methods"])
    default = first["default_method"]
    head = ["method"]
    for _, name in DATASETS:
        head += [f"{name} {label}" for _, label in TABLE_METRICS] + [f"{name} s / example"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in keys:
        label = first["methods"][k]["label"] + (" **(default)**" if k == default else "")
        cells = [label]
        for ds, _ in DATASETS:
            m = runs[ds]["methods"].get(k)
            if m is None:
                cells += ["n/a"] * (len(TABLE_METRICS) + 1)
                continue
            cells += [_num(m[metric]["mean"]) for metric, _ in TABLE_METRICS] + [_num(m["seconds"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for ds, name in DATASETS:
        r = runs[ds]
        minutes = r["compute_seconds"] / 60
        verdicts = []
        for metric, label in METRICS:
            v = r["pareto"]["by_metric"][metric]["default"]
            by = ", ".join(f"*{r['methods'][d]['label']}*" for d in v["dominated_by"])
            verdicts.append(f"{label}: " + ("on the front" if v["on_front"] else f"dominated by {by}"))
        lines.append(
            f"- **{name}**: {r['examples']} dev examples, {r['mean_prompt_tokens']:.0f} prompt tokens and "
            f"{r['mean_sentences']:.1f} context sentences on average; {minutes:.0f} min of compute. "
            f"Default (*{first['methods'][default]['label']}*) against the Pareto front of time and each metric: "
            + "; ".join(verdicts) + ". " + _key_figures(r, default)
        )
    return "\n".join(lines)


def _key_figures(r: dict, default: str) -> str:
    """The comparisons the README's prose leans on, computed from the run."""
    ms, d = r["methods"], r["methods"][default]
    out = [f"The default takes {d['attribution_over_generation']:.1f}x the target's generation time and is "
           f"{d['speedup_vs_naive']:.1f}x faster than naive exact LOO (timed on {d['speedup_examples']} example)."]
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
    return " ".join(out)


def splice(readme: str, block: str) -> str:
    """README text with the marked block replaced by ``block``."""
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise ValueError(f"README must hold exactly one {START} ... {END} block")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="qwen2.5-coder-0.5b")
    ap.add_argument("--proxy", default="smollm2-135m")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the README block")
    mode.add_argument("--check", action="store_true", help="exit 1 when the README block is stale")
    args = ap.parse_args(argv)
    block = render(load(args.target, args.proxy))
    if not (args.write or args.check):
        print(block)
        return 0
    readme_path = Path(args.readme)
    readme = readme_path.read_text()
    new = splice(readme, block)
    if args.write:
        readme_path.write_text(new)
    elif args.check:
        if new != readme:
            print(f"{readme_path}: the faithfulness table differs from the result JSON; run "
                  "python -m benchmarks.readme_table --write", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
