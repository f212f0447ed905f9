"""Faithfulness and speed of attribution methods against exact leave-one-out, on real data.

    python -m benchmarks.faithfulness --data ../shared/data/hotpotqa/dev.jsonl --n 20 \\
        --target qwen2.5-coder-1.5b --proxy qwen2.5-coder-0.5b --out benchmarks/results

Per example the target answers greedily (``--max-new-tokens`` bounds it) and every method
attributes that same answer to the context's sentences. **Gold** is exact sentence-level LOO of
the answer under the target (uncached forward passes), cached on disk by (example id, model,
dtype, answer, context sentences), so adding a method never recomputes it. Records and the gold
cache keep the answer's SHA-256, never its text (answers quote the data): a resumed example
regenerates its answer and checks it against the digest.

Methods (``--methods``, comma-separated keys; default all that apply):

* ``naive-exact``: exact LOO, one uncached forward pass per sentence (the gold computation
  itself; timed on the first ``--naive-subset`` examples only when gold runs another engine),
* ``cached-batched``: exact LOO on the KV-cached, batched engine,
* ``hier-top3`` / ``hier-top2`` / ``hier-share80``: hierarchical (documents, then sentences of
  the kept documents) with the top-k and share keep rules,
* ``proxy``, ``proxy-hier-top3``, ``proxy-prune`` (needs ``--proxy``),
* ``masked`` (masked LOO, approximate), ``hier-pruned-top3`` (sentences scored within the kept
  documents only), ``masked-rescore`` (masked LOO, then exact target LOO of the best 8 sentences),
* ``contextcite-16`` / ``-32`` / ``-64``: the ``context-cite`` package on the target,
* ``attention``, ``embedding`` (all-MiniLM-L6-v2), ``random``.

Metrics: Pearson and Spearman with gold (per example, averaged), AP of the gold outliers
(Q3 + 1.5 IQR; examples without outliers skipped and counted), top-1 agreement, precision and
recall of the top ``--cite-k`` sentences against HotpotQA's supporting facts, hit@1 of the gold
passage, wall seconds and forward tokens per model, speed-up over naive exact LOO, and
attribution time over the target's generation time.

Writes ``<stem>.json`` (everything, per example), ``<stem>.md`` (the table),
``<stem>_pareto.png`` (time vs faithfulness) and ``<stem>.records.jsonl`` (one line per
example and method, so an interrupted run resumes where it stopped, and a finished one
re-renders its table without recomputing) into ``--out``, and rewrites ``faithfulness.md`` there
with every run's table. Timings are wall seconds and process CPU seconds (steadier on a shared
machine); both are taken in fp32 by default (see ``--dtype``).

Cost knobs for slow machines, each recorded in the JSON: ``--gold-engine batched`` with
``--naive-subset N`` (gold on the cached engine, equal to exact LOO in fp32, naive exact timed
on N examples), ``--hotpot-docs`` / ``--squad-passages`` (fewer documents per example),
``--methods`` (a subset; add the rest later, gold comes from the cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attribot_rag import Attributor, PromptTemplate, Strategy, load_model
from attribot_rag.attributor import PRESETS, resolve_strategy
from attribot_rag.models import LoadedModel, dtype_name, resolve_dtype
from attribot_rag.spans import Source

from . import metrics as M
from .common import DEFAULT_HOTPOT, answer_digest, detect_dataset, load_examples
from .peers import ContextCite, EmbeddingSimilarity, MethodRun, attention_scores, flat_sentences, random_scores

RECOMMENDED = "★"  # marks attribot-rag's recommended default in tables and plots
PARETO_METRICS = ["pearson", "spearman", "outlier_ap", "top1"]


@dataclasses.dataclass(frozen=True)
class Method:
    """A benchmarked method: a key for ``--methods``, a label for tables, and how it runs."""

    key: str
    label: str
    kind: str  # "strategy", "naive", "contextcite", "attention", "embedding", "random"
    strategy: Strategy | None = None
    ablations: int | None = None
    needs_proxy: bool = False


def all_methods(has_proxy: bool, contextcite_budgets: Sequence[int]) -> list[Method]:
    """Every method in table order; proxy methods only with a proxy."""
    methods = [
        Method("naive-exact", "naive exact LOO", "naive", PRESETS["exact"]),
        Method("cached-batched", "cached+batched exact LOO", "strategy", PRESETS["batched"]),
        Method("hier-top3", "hierarchical, top-3 docs", "strategy", PRESETS["hierarchical"]),
        Method("hier-top2", "hierarchical, top-2 docs", "strategy",
               Strategy(level="hierarchical", keep_top_k=2, name="hierarchical-top2")),
        Method("hier-share80", "hierarchical, docs with 80% of score", "strategy",
               Strategy(level="hierarchical", keep_top_k=None, keep_share=0.8, name="hierarchical-share80")),
        Method("proxy", "proxy sentence LOO", "strategy", PRESETS["proxy"], needs_proxy=True),
        Method("proxy-hier-top3", "proxy + hierarchical, top-3 docs", "strategy", PRESETS["proxy-hierarchical"],
               needs_proxy=True),
        Method("proxy-prune", "proxy prune (top-3 docs, 8 sents) + target rescoring", "strategy",
               PRESETS["proxy-prune"], needs_proxy=True),
        # issue #17: approximate first stages and their compositions (labelled as such in every result)
        Method("masked", "masked LOO, all docs and sents (approximate)", "strategy", PRESETS["masked"]),
        Method("hier-pruned-top3", "hierarchical, top-3 docs, sentences within them (pruned context)", "strategy",
               PRESETS["hierarchical-pruned"]),
        Method("masked-rescore", "masked LOO + exact target rescoring of 8 sents", "strategy",
               PRESETS["masked-rescore"]),
    ]
    methods += [Method(f"contextcite-{k}", f"ContextCite, {k} ablations", "contextcite", ablations=k)
                for k in sorted(contextcite_budgets)]
    methods += [
        Method("attention", "attention (layers x heads)", "attention"),
        Method("embedding", "embedding similarity (MiniLM)", "embedding"),
        Method("random", "random", "random"),
    ]
    return [m for m in methods if has_proxy or not m.needs_proxy]


def default_method_key(methods: Sequence[Method], has_proxy: bool) -> str | None:
    """The key of the method running attribot-rag's recommended default (``strategy="auto"``)."""
    auto = resolve_strategy("auto", has_proxy)
    for m in methods:
        if m.kind == "strategy" and m.strategy == auto:
            return m.key
    return None


# ------------------------------------------------------------------------------------ gold cache
# PromptTemplate fields added after results were recorded: at their default they change no prompt, so they stay
# out of the fingerprint and gold keys (which would otherwise discard hours of cached gold and records).
_LATER_TEMPLATE_FIELDS = ("messages",)


def template_key(template: PromptTemplate) -> str:
    """The template as the fingerprint and gold keys see it: its repr without later fields left at default."""
    text = repr(template)
    for name in _LATER_TEMPLATE_FIELDS:
        if getattr(template, name) is None:
            text = text.replace(f", {name}=None", "")
    return text


def _sources_digest(sources: Sequence[Source]) -> str:
    payload = [[s.id, s.title, [x.text for x in s.sentences], s.text] for s in sources]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


class GoldCache:
    """Exact sentence-level LOO scores on disk, one JSON file per (example, model, dtype, answer, context)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(example_id: str, model: str, dtype: str, answer_sha256: str, sources: Sequence[Source],
            template: str) -> str:
        fields = [example_id, model, dtype, answer_sha256, _sources_digest(sources), template]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()[:24]

    def get(self, key: str) -> dict | None:
        path = self.folder / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, entry: dict) -> None:
        path = self.folder / f"{key}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        tmp.replace(path)


def flat_scores(result) -> tuple[list[float], list[bool]]:
    """An AttributionResult's sentence scores in flat order, and which were actually scored."""
    spans = [s for row in result.sentence_scores for s in row]
    return [s.score for s in spans], [s.scored for s in spans]


def run_strategy(att: Attributor, strat: Strategy, ex: dict, answer: str) -> MethodRun:
    """One attribot-rag strategy on the given answer."""
    # Leave-one-out attribution only: the context-support passes (the verdicts' lift and sufficiency, the same
    # for every method) are skipped, so rows stay comparable with rows timed before those passes existed.
    res = att.attribute(ex["question"], ex["sources"], answer, strategy=strat, context_support=False)
    scores, scored = flat_scores(res)
    return MethodRun(scores, res.timing["total_seconds"], res.timing["models"],
                     {"n_scored": int(sum(scored)), "dropped_sources": [s.id for s in res.dropped_sources],
                      "passes": res.timing.get("passes")})


# --------------------------------------------------------------------------------------- metrics
def example_metrics(scores: Sequence[float], gold: Sequence[float], ex: dict, cite_k: int) -> dict[str, float]:
    """Every faithfulness metric of one method on one example."""
    flat = flat_sentences(ex["sources"])
    out = {
        "pearson": M.pearson(scores, gold),
        "spearman": M.spearman(scores, gold),
        "outlier_ap": M.outlier_ap(scores, gold),
        "n_outliers": int(M.gold_outliers(gold).sum()),
        "top1": M.top1_agreement(scores, gold),
        "passage_hit1": M.hit_at_1(scores, [d in ex["gold_documents"] for d, _ in flat]),
    }
    if ex["dataset"] == "hotpotqa":
        rel = [a in ex["gold_sentences"] for a in flat]
        out["precision_at_k"], out["recall_at_k"] = M.precision_recall_at_k(scores, rel, cite_k)
    return out


METRIC_COLUMNS = [  # (metric key, column header, applies to HotpotQA only)
    ("pearson", "Pearson", False),
    ("spearman", "Spearman", False),
    ("outlier_ap", "outlier mAP", False),
    ("top1", "top-1", False),
    ("precision_at_k", "P@k", True),
    ("recall_at_k", "R@k", True),
    ("passage_hit1", "gold passage @1", False),
]


def aggregate(rows: list[dict], naive_seconds: dict[tuple[str, str], float]) -> dict[str, Any]:
    """Means over one method's per-example rows (undefined values skipped and counted).

    ``naive_seconds`` is keyed by (example, CPU): a speed-up divides times taken on one machine only.
    """
    ok = [r for r in rows if r.get("error") is None and r.get("metrics") is not None]
    out: dict[str, Any] = {"examples": len(ok), "errors": len(rows) - len(ok),
                           "error_messages": sorted({r["error"] for r in rows if r.get("error")})}
    for key, _, _ in METRIC_COLUMNS:
        vals = [r["metrics"][key] for r in ok if key in r["metrics"]]
        if vals:
            mean, used, skipped = M.mean_defined(vals)
            out[key] = {"mean": mean, "used": used, "skipped": skipped}
    secs = [r["seconds"] for r in ok]
    out["seconds"] = float(np.mean(secs)) if secs else float("nan")
    cpu = [r["extra"].get("cpu_seconds") for r in ok]
    out["cpu_seconds"] = float(np.mean(cpu)) if cpu and all(c is not None for c in cpu) else float("nan")
    names = sorted({m for r in ok for m in r["models"]})
    out["models"] = {
        m: {k: float(np.mean([r["models"].get(m, {}).get(k, 0) for r in ok]))
            for k in ("forward_passes", "forward_tokens", "seconds")}
        for m in names
    }
    pairs = [(naive_seconds[(r["example"], r["cpu"])], r["seconds"]) for r in ok
             if (r["example"], r["cpu"]) in naive_seconds]
    out["timed_on"] = dict(Counter(r["cpu"] for r in ok))
    out["speedup_vs_naive"] = (float(np.mean([a for a, _ in pairs]) / np.mean([b for _, b in pairs]))
                               if pairs else float("nan"))
    out["speedup_examples"] = len(pairs)
    per = sorted(a / b for a, b in pairs if b > 0)
    out["speedup_spread"] = ({"min": per[0], "median": float(np.median(per)), "max": per[-1]} if per else None)
    ratios = [r["seconds"] / r["generation_seconds"] for r in ok if r.get("generation_seconds")]
    out["attribution_over_generation"] = float(np.mean(ratios)) if ratios else float("nan")
    return out


# ----------------------------------------------------------------------------------- the runner
class Runner:
    """Runs every selected method on every example; loads each model on first use, so rendering
    finished records (``--complete-only``) loads none."""

    def __init__(self, args: argparse.Namespace, dataset: str) -> None:
        self.args = args
        self.dataset = dataset
        self.load_seconds: dict[str, float] = {}
        # Precision names as the loaded models will report them (checked on load): the fingerprint needs them.
        self.dtype = dtype_name(resolve_dtype(args.dtype))
        self.gold_dtype = dtype_name(resolve_dtype(args.gold_dtype)) if args.gold_dtype else self.dtype
        self.template = PromptTemplate()
        self.template_repr = template_key(self.template)
        self.has_proxy = bool(args.proxy)
        budgets = [int(x) for x in args.contextcite_ablations.split(",") if x.strip()]
        every = all_methods(self.has_proxy, budgets)
        wanted = [k.strip() for k in args.methods.split(",")] if args.methods else [m.key for m in every]
        unknown = set(wanted) - {m.key for m in every}
        if unknown:
            raise SystemExit(f"unknown or unavailable methods: {', '.join(sorted(unknown))} "
                             f"(available: {', '.join(m.key for m in every)})")
        self.methods = [m for m in every if m.key in wanted]
        self.default_key = default_method_key(every, self.has_proxy)
        self.gold = GoldCache(Path(args.cache) if args.cache else Path(args.out) / "gold_cache")
        self._att: Attributor | None = None
        self._gold_att: Attributor | None = None
        self._contextcite: ContextCite | None = None
        self._embedder: EmbeddingSimilarity | None = None

    def _load(self, role: str, name: str, dtype: str) -> LoadedModel:
        started = time.perf_counter()
        loaded = load_model(name, dtype=dtype)
        self.load_seconds[role] = time.perf_counter() - started
        got, want = dtype_name(loaded.model.dtype), dtype_name(resolve_dtype(dtype))
        if got != want:  # the fingerprint and gold key were computed from the requested precision
            raise SystemExit(f"{name} loaded in {got}, not the requested {want}")
        return loaded

    @property
    def att(self) -> Attributor:
        """The attributor of the benchmarked methods (target and proxy in ``--dtype``)."""
        if self._att is None:
            target = self._load("target", self.args.target, self.args.dtype)
            proxy = self._load("proxy", self.args.proxy, self.args.dtype) if self.args.proxy else None
            self._att = Attributor(target, proxy, strategy="exact", max_batch_size=self.args.batch_size,
                                   template=self.template)
        return self._att

    @property
    def target(self) -> LoadedModel:
        return self.att.target.loaded

    @property
    def gold_att(self) -> Attributor:
        """Gold may run in another precision (e.g. fp32 gold for bf16 methods): a second copy of the target."""
        if self._gold_att is None:
            if self.gold_dtype == self.dtype:
                self._gold_att = self.att
            else:
                gold_target = self._load("gold target", self.args.target, self.args.gold_dtype)
                self._gold_att = Attributor(gold_target, strategy="exact", max_batch_size=self.args.batch_size,
                                            template=self.template)
        return self._gold_att

    # -- config fingerprint: records from a run with other settings are never reused
    def fingerprint(self) -> str:
        a = self.args
        fields = [self.dataset, str(Path(a.data).resolve()), a.target, a.proxy, self.dtype, a.max_new_tokens,
                  a.squad_passages, a.squad_seed, a.hotpot_docs, a.batch_size, a.contextcite_keep_prob,
                  self.template_repr, a.gold_engine]
        if self.gold_dtype != self.dtype:
            fields.append(self.gold_dtype)
        return hashlib.sha256(json.dumps(fields, default=str).encode()).hexdigest()[:16]

    def contextcite(self) -> ContextCite:
        if self._contextcite is None:
            self._contextcite = ContextCite(self.target, self.att.template, keep_prob=self.args.contextcite_keep_prob)
        return self._contextcite

    def embedder(self) -> EmbeddingSimilarity:
        if self._embedder is None:
            self._embedder = EmbeddingSimilarity()
            self.load_seconds["embedding"] = self._embedder.load_seconds
        return self._embedder

    def gold_key(self, ex: dict, answer_sha256: str) -> str:
        return GoldCache.key(ex["id"], self.args.target, self.gold_dtype, answer_sha256, ex["sources"],
                             self.template_repr)

    def expected_methods(self, index: int) -> list[str]:
        """The method keys an example at this position gets (naive only inside --naive-subset)."""
        subset = self.args.naive_subset
        return [m.key for m in self.methods if m.kind != "naive" or subset is None or index < subset]

    def gold_scores(self, ex: dict, answer_sha256: str, answer: str | None) -> dict:
        """Gold LOO for this answer: from the cache, or computed (and cached) now (``answer`` needed then)."""
        key = self.gold_key(ex, answer_sha256)
        entry = self.gold.get(key)
        if entry is not None:
            entry["cached"] = True
            return entry
        if answer is None:
            raise ValueError(f"{ex['id']}: gold is not cached and the answer text is not at hand")
        strat = Strategy(level="sentence", engine_mode=self.args.gold_engine, name=f"gold-{self.args.gold_engine}")
        cpu = time.process_time()
        run = run_strategy(self.gold_att, strat, ex, answer)
        entry = {
            "example": ex["id"], "model": self.args.target, "dtype": self.gold_dtype, "answer_sha256": answer_sha256,
            "engine": self.args.gold_engine, "scores": run.scores, "seconds": run.seconds,
            "cpu_seconds": time.process_time() - cpu, "models": run.models,
            "machine": machine_info(), "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.gold.put(key, entry)
        entry["cached"] = False
        return entry

    def run_method(self, m: Method, ex: dict, answer: str, gold: dict, index: int,
                   pending_cc: dict[int, MethodRun]) -> MethodRun | None:
        """One method on one example (``None`` = skipped by design, e.g. outside the naive subset)."""
        if m.kind == "naive":
            if gold["engine"] == "exact" and gold["dtype"] == self.dtype:
                # the gold computation is naive exact LOO in the methods' precision: reuse its scores and time
                return MethodRun(gold["scores"], gold["seconds"], gold["models"],
                                 {"from_gold": True, "gold_cached": gold["cached"], "gold_created": gold["created"],
                                  "cpu_seconds": gold.get("cpu_seconds")})
            if self.args.naive_subset is not None and index >= self.args.naive_subset:
                return None
            return run_strategy(self.att, m.strategy, ex, answer)
        if m.kind == "strategy":
            return run_strategy(self.att, m.strategy, ex, answer)
        if m.kind == "contextcite":
            if not pending_cc:
                budgets = [x.ablations for x in self.methods if x.kind == "contextcite"]
                pending_cc.update(self.contextcite()(ex["question"], ex["sources"], answer, budgets))
            return pending_cc[m.ablations]
        if m.kind == "attention":
            return attention_scores(self.target, self.att.template, ex["question"], ex["sources"], answer)
        if m.kind == "embedding":
            return self.embedder()(ex["sources"], answer)
        if m.kind == "random":
            return random_scores(len(flat_sentences(ex["sources"])), ex["id"], self.args.seed)
        raise ValueError(f"unknown method kind {m.kind!r}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where the timings were taken (the load average shows how shared the machine was)."""
    return {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def load_records(path: Path, fingerprint: str) -> dict[tuple[str, str], dict]:
    """Records of an earlier run with the same settings, by (example id, method key); failures are retried.

    Each record carries the digest of the answer it scored (records written before digests: the
    answer of the example record before it).
    """
    out: dict[tuple[str, str], dict] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by an interrupted run
            continue
        if r.get("fingerprint") != fingerprint or r.get("error") is not None:
            continue
        if "answer" in r:  # an older record holding the text
            r["answer_sha256"] = answer_digest(r.pop("answer"))
        if "answer_sha256" not in r:
            meta = out.get((r["example"], "__example__"))
            r["answer_sha256"] = meta["answer_sha256"] if meta else None
        out[(r["example"], r["method"])] = r
    return out


RUN_MACHINE_KEYS = ("platform", "cpu", "cpu_count", "torch", "torch_threads", "cuda")


def run_machine(machines: Sequence[dict | None]) -> tuple[dict, int]:
    """The machine most examples ran on (from their records, not the process rendering them) and how
    many distinct ones there were."""
    seen = [{k: m.get(k) for k in RUN_MACHINE_KEYS} for m in machines if m]
    if not seen:
        return {k: v for k, v in machine_info().items() if k in RUN_MACHINE_KEYS}, 0
    counts = Counter(json.dumps(m, sort_keys=True) for m in seen)
    return json.loads(counts.most_common(1)[0][0]), len(counts)


def missing_work(runner: Runner, done: dict[tuple[str, str], dict], ex: dict, index: int, digest: str) -> list[str]:
    """What an example with a recorded answer still needs: methods without a record of that answer, and gold."""
    todo = [k for k in runner.expected_methods(index)
            if (done.get((ex["id"], k)) or {}).get("answer_sha256") != digest]
    return todo + ([] if runner.gold.get(runner.gold_key(ex, digest)) else ["gold"])


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def render_table(summary: dict) -> str:
    """The markdown table of one run."""
    hotpot = summary["dataset"] == "hotpotqa"
    cols = [(k, h) for k, h, hp in METRIC_COLUMNS if hotpot or not hp]
    k = summary["cite_k"]
    head = ["method"] + [h.replace("@k", f"@{k}") for _, h in cols] + [
        "s / example", "CPU s / example", "forward tokens / example", "x vs naive", "attribution / generation",
        "Pareto"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in summary["methods"].items():
        label = row["label"] + (f" {RECOMMENDED} default" if key == summary["default_method"] else "")
        cells = [label]
        for mk, _ in cols:
            v = row.get(mk)
            cell = _fmt(v["mean"]) if v else "–"
            if mk == "outlier_ap" and v:
                cell += f" (n={v['used']})"
            cells.append(cell)
        toks = ", ".join(f"{m}: {v['forward_tokens']:,.0f}" for m, v in row["models"].items()) or "0"
        speedup = _fmt(row["speedup_vs_naive"], 1)
        spread = row.get("speedup_spread")
        if spread and row.get("speedup_examples", 0) > 1:  # per-example naive / method ratios
            speedup += f" ({spread['min']:.1f}-{spread['max']:.1f}, n={row['speedup_examples']})"
        cells += [_fmt(row["seconds"], 2), _fmt(row["cpu_seconds"], 2), toks, speedup,
                  _fmt(row["attribution_over_generation"], 1), "yes" if key in summary["pareto"]["front"] else ""]
        if row["errors"]:
            cells[0] += f" ({row['errors']} failed)"
        elif row["examples"] < summary["examples"]:  # --allow-missing: fewer examples than the table
            cells[0] += f" ({row['examples']} of {summary['examples']} examples)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(summary: dict) -> str:
    """Heading, setting, the table, and the verdict on the recommended default."""
    s = summary
    pm = s["pareto"]["metric"]
    threads = s["machine"]["torch_threads"]
    machines = s.get("machines", 1)
    mixed = (f"; the most common of {machines} settings in the records" if machines > 1 else
             "; machine facts of the rendering process: the records predate them" if machines == 0 else "")
    pk = (f"P@{s['cite_k']} / R@{s['cite_k']}: top-{s['cite_k']} sentences vs HotpotQA supporting facts. "
          if s["dataset"] == "hotpotqa" else "")
    lines = [
        f"### {s['dataset']}: target `{s['target']}`" + (f", proxy `{s['proxy']}`" if s["proxy"] else ""),
        "",
        f"{s['examples']} example{'' if s['examples'] == 1 else 's'} ({s['data']}), answers greedy, "
        f"at most {s['max_new_tokens']} new tokens; "
        f"{s['dtype']} on {s['machine']['cuda'] or s['machine']['cpu']} ("
        f"{threads} torch thread{'' if threads == 1 else 's'}, mean 1-min load average {_fmt(s['mean_load_1m'], 1)}"
        f"{' on ' + str(s['machine']['cpu_count']) + ' cores' if s['machine']['cpu_count'] else ''}"
        f"{mixed}). "
        "Gold = exact sentence LOO "
        f"({s['gold_engine']} engine, {s.get('gold_dtype', s['dtype'])}; {s['gold_cached']} of {s['examples']} "
        "from the cache). "
        f"Mean answer {s['mean_answer_tokens']:.1f} tokens, {s['mean_documents']:.1f} documents, "
        f"{s['mean_sentences']:.1f} context sentences, "
        f"{s['mean_prompt_tokens']:.0f} prompt tokens; target generation {s['generation_seconds']:.2f} s / example. "
        f"Compute time {s['compute_seconds'] / 60:.1f} min (generation, gold and every method, summed over "
        "the invocations that made the records).",
        "",
        render_table(s),
        "",
        f"Outlier mAP: n = examples with gold outliers (Q3 + 1.5 IQR); the other "
        f"{s['examples_without_outliers']} have none and are skipped. {pk}Gold passage @1: the top sentence lies in "
        f"a gold paragraph. Pareto: mean seconds vs mean {pm} "
        f"(rounded to 3 decimals). CPU s: process CPU time (all threads), steadier than wall time on a shared "
        f"machine. {s['contextcite_note']}",
    ]
    if s["naive_note"]:
        lines += ["", s["naive_note"]]
    machines_of = Counter(cpu for row in s["methods"].values() for cpu in (row.get("timed_on") or {}))
    if len(machines_of) > 1:  # rows timed on different machines: their seconds do not compare across machines
        per = {cpu: [row["label"] for row in s["methods"].values() if cpu in (row.get("timed_on") or {})]
               for cpu in machines_of}
        lines += ["", "Timed on several machines (seconds compare only within one; speed-ups over naive and time "
                  "over generation divide times taken on one machine): " + "; ".join(
                      f"{cpu}: {', '.join(labels)}" for cpu, labels in per.items()) + "."]
    if s.get("dtype_effect"):
        lines += ["", M.dtype_effect_text(s)]
    others = s["pareto"].get("by_metric", {})
    if others and s["default_method"]:
        lines += ["", "Default on the Pareto front, by faithfulness metric: " + "; ".join(
            f"{metric}: {'yes' if v['default']['on_front'] else 'no'}" for metric, v in others.items()) + "."]
    d = s["default_verdict"]
    if d:
        if d["on_front"]:
            lines += ["", f"{RECOMMENDED} attribot-rag's recommended default (`{s['default_strategy']}`) is on the "
                          f"Pareto front of time vs {pm}."]
        else:
            lines += ["", f"{RECOMMENDED} attribot-rag's recommended default (`{s['default_strategy']}`) is NOT on the "
                          f"Pareto front of time vs {pm}: dominated by {', '.join(d['dominated_by'])}."]
    return "\n".join(lines) + "\n"


def plot_pareto(summary: dict, path: Path, floor: float = 0.01) -> None:
    """Mean seconds (log) vs mean faithfulness, one numbered point per method, keyed at the right.

    The front is joined, the default starred; methods faster than ``floor`` seconds (random) are
    drawn at the floor.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pm = summary["pareto"]["metric"]
    raw = summary["pareto"]["points"]
    order = [k for k in summary["methods"] if k in raw]
    pts = {k: (max(raw[k][0], floor), raw[k][1]) for k in order
           if math.isfinite(raw[k][1]) and math.isfinite(raw[k][0])}
    fig, ax = plt.subplots(figsize=(11, 6))
    front = sorted(pts[k] for k in summary["pareto"]["front"] if k in pts)
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:green", alpha=0.5,
                label="Pareto front")
    key_lines = []
    for n, key in enumerate(order, start=1):
        row = summary["methods"][key]
        is_default = key == summary["default_method"]
        on_front = key in summary["pareto"]["front"]
        mark = (" *default*" if is_default else "") + (" (front)" if on_front else "")
        if key not in pts:
            key_lines.append(f"{n:>2}  {row['label']}: undefined{mark}")
            continue
        x, y = pts[key]
        ax.scatter([x], [y], s=220 if is_default else 45, marker="*" if is_default else "o",
                   color="tab:red" if is_default else ("tab:green" if on_front else "tab:gray"), zorder=3,
                   label=f"attribot-rag default ({key})" if is_default else None)
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        secs = f"<{floor:g} s" if raw[key][0] < floor else f"{raw[key][0]:.3g} s"
        key_lines.append(f"{n:>2}  {row['label']}: {secs}, {y:.3f}{mark}")
    ax.set_xscale("log")
    ax.set_xlabel("attribution wall time per example (s, log scale)")
    ax.set_ylabel(f"faithfulness to exact LOO (mean {pm})")
    title = f"{summary['dataset']}: {summary['target']}" + (f" / proxy {summary['proxy']}" if summary["proxy"] else "")
    ax.set_title(f"{title} ({summary['examples']} example{'' if summary['examples'] == 1 else 's'}, "
                 f"{summary['dtype']})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.text(0.99, 0.5, "\n".join(key_lines), fontsize=7.5, family="monospace", va="center", ha="left",
             transform=ax.transAxes)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_HOTPOT), help="HotpotQA JSONL or SQuAD 2.0 JSON")
    ap.add_argument("--dataset", choices=["hotpotqa", "squad"], default=None, help="default: inferred from the file")
    ap.add_argument("--n", type=int, default=20, help="examples")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--proxy", default=None)
    ap.add_argument("--dtype", default="fp32",
                    help="fp32 (default: in bf16, cached and uncached exact LOO differ by up to ~0.3 nats on CPU, "
                         "a noise floor under every method's faithfulness), bf16 or fp16")
    ap.add_argument("--methods", default=None, help="comma-separated method keys (default: all that apply)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--cite-k", type=int, default=2, help="k of the precision/recall of cited sentences")
    ap.add_argument("--contextcite-ablations", default="16,32,64")
    ap.add_argument("--contextcite-keep-prob", type=float, default=0.5)
    ap.add_argument("--gold-dtype", default=None,
                    help="precision of gold LOO (default: --dtype); e.g. fp32 gold for --dtype bf16 methods")
    ap.add_argument("--gold-engine", choices=["exact", "serial", "batched"], default="exact",
                    help="engine computing gold LOO (all give the same scores; 'exact' is the naive reference)")
    ap.add_argument("--naive-subset", type=int, default=None,
                    help="with --gold-engine other than exact: time naive exact LOO on the first N examples only")
    ap.add_argument("--allow-missing", default="",
                    help="with --complete-only: comma-separated methods whose missing records do not drop an "
                         "example (they report over the examples they have, and their label says how many)")
    ap.add_argument("--on-answer-change", choices=["restart", "skip"], default="restart",
                    help="a resumed example whose regenerated answer differs from its record: start it over "
                         "(new gold, every method) or skip it")
    ap.add_argument("--retime-generation", action="store_true",
                    help="regenerate every recorded answer (after an untimed warm-up generation) and record its "
                         "generation time on this machine; methods with records do not run again")
    ap.add_argument("--batch-size", type=int, default=None, help="engine rows per batched pass (default: engine's)")
    ap.add_argument("--squad-passages", type=int, default=10,
                    help="SQuAD: documents per example (gold paragraph + others of its article); 0 = whole article")
    ap.add_argument("--squad-seed", type=int, default=0)
    ap.add_argument("--hotpot-docs", type=int, default=0,
                    help="HotpotQA: keep the gold paragraphs + the first distractors, this many in all (0 = all 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    ap.add_argument("--pareto-metric", choices=PARETO_METRICS, default="pearson",
                    help="the faithfulness axis of the plot and the Pareto column")
    ap.add_argument("--cache", default=None, help="gold LOO cache folder (default: OUT/gold_cache)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--fresh", action="store_true", help="ignore records of an earlier run with the same settings")
    ap.add_argument("--complete-only", action="store_true",
                    help="compute nothing: report the examples whose records are all there (e.g. after merging "
                         "the records of runs over other --offset ranges)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    run_started = time.perf_counter()
    dataset = args.dataset or detect_dataset(args.data)
    examples = load_examples(args.data, dataset, args.n, args.offset, hotpot_docs=args.hotpot_docs or None,
                             **({"passages": args.squad_passages or None, "seed": args.squad_seed}
                                if dataset == "squad" else {}))
    runner = Runner(args, dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"faithfulness_{dataset}_{args.target}" + (f"_proxy_{args.proxy}" if args.proxy else "")
    stem = stem.replace("/", "_")
    records_path = out / f"{stem}.records.jsonl"
    fingerprint = runner.fingerprint()
    done = {} if args.fresh else load_records(records_path, fingerprint)
    if args.fresh and records_path.exists():
        records_path.unlink()
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    per_example: list[dict] = []
    rows: dict[str, list[dict]] = {m.key: [] for m in runner.methods}
    with records_path.open("a") as rec_file:
        def record(r: dict) -> None:
            rec_file.write(json.dumps(r) + "\n")
            rec_file.flush()

        warm = [False]

        def timed_generation(ex: dict) -> tuple[str, float]:
            if not warm[0]:  # a process's first passes pay one-off costs (kernel choice, allocation): untimed
                runner.att.generate(ex["question"], ex["sources"], max_new_tokens=args.max_new_tokens)
                warm[0] = True
            t0 = time.perf_counter()
            text = runner.att.generate(ex["question"], ex["sources"], max_new_tokens=args.max_new_tokens)
            return text, time.perf_counter() - t0

        for i, ex in enumerate(examples):
            meta = done.get((ex["id"], "__example__"))
            missing = ["answer"] if meta is None else missing_work(runner, done, ex, i, meta["answer_sha256"])
            if args.retime_generation and meta is not None and not args.complete_only:
                missing = missing or ["generation time"]  # regenerate: this machine's time, methods untouched
            optional = {k.strip() for k in args.allow_missing.split(",") if k.strip()}
            if args.complete_only and optional and meta is not None and set(missing) <= optional:
                missing = []  # --allow-missing: those methods report over the examples they have
            if args.complete_only and missing:
                log(f"[{i + 1}/{len(examples)}] {ex['id']} skipped (--complete-only): "
                    + ("no answer yet" if meta is None else f"missing {', '.join(missing)}"))
                continue
            answer: str | None = None
            if missing:  # work to do: the answer text is needed (records keep only its digest)
                answer, gen = timed_generation(ex)
                if meta is not None and answer_digest(answer) != meta["answer_sha256"]:
                    if args.on_answer_change == "skip":
                        log(f"[{i + 1}/{len(examples)}] {ex['id']}: the regenerated answer differs from the "
                            "recorded one (another thread count, library version or machine?): skipped")
                        continue
                    log(f"[{i + 1}/{len(examples)}] {ex['id']}: the regenerated answer differs from the recorded "
                        "one (another thread count, library version or machine?): the example starts over")
                    meta = None
                elif meta is not None:  # the recorded answer again: this machine's generation time, for ratios here
                    timed_gen = {"fingerprint": fingerprint, "example": ex["id"],
                                 "method": f"__generation__ {_cpu_model()}", "answer_sha256": answer_digest(answer),
                                 "seconds": gen, "cpu": _cpu_model(), "torch_threads": torch.get_num_threads(),
                                 "after_warmup": True}
                    record(timed_gen)
                    done[(ex["id"], timed_gen["method"])] = timed_gen  # this run's rows pair with it too
                if meta is None:
                    enc = runner.att.encode(ex["question"], ex["sources"], answer)
                    meta = {"fingerprint": fingerprint, "example": ex["id"], "method": "__example__",
                            "answer_sha256": answer_digest(answer), "generation_seconds": gen,
                            "answer_tokens": len(enc.answer_ids), "prompt_tokens": len(enc.prompt_ids),
                            "sentences": len(flat_sentences(ex["sources"])), "documents": len(ex["sources"]),
                            "proxy_tokenizer": runner.att.tokenizer_path, "machine": machine_info()}
                    record(meta)
            digest = meta["answer_sha256"]
            gold = runner.gold_scores(ex, digest, answer)
            gold_note = "cached" if gold["cached"] else f"{gold['seconds']:.1f}s"
            log(f"[{i + 1}/{len(examples)}] {ex['id']} answer {digest[:12]} ({meta['answer_tokens']} tokens) "
                f"gold {gold_note}")
            pending_cc: dict[int, MethodRun] = {}
            ex_rows = {}
            for m in runner.methods:
                r = done.get((ex["id"], m.key))
                if r is not None and r.get("answer_sha256") != digest:
                    r = None  # it scored another answer
                if r is None and args.complete_only:
                    continue  # --allow-missing: this method has no record of this example
                if r is None:
                    try:
                        cpu = time.process_time()
                        run = runner.run_method(m, ex, answer, gold, i, pending_cc)
                        if run is not None:
                            run.extra.setdefault("cpu_seconds", time.process_time() - cpu)
                        err = None
                    except Exception as exc:  # a method failing on one example is a result, not a crash
                        run, err = None, f"{type(exc).__name__}: {exc}"
                    if run is None and err is None:
                        continue  # skipped by design (outside the naive subset)
                    r = {"fingerprint": fingerprint, "example": ex["id"], "method": m.key, "answer_sha256": digest,
                         "error": err, "cpu": _cpu_model(), "torch_threads": torch.get_num_threads(),
                         "load_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                         "scores": run.scores if run else None, "seconds": run.seconds if run else None,
                         "models": run.models if run else {}, "extra": run.extra if run else {}}
                    record(r)
                    log(f"    {m.key:<16} " + (f"{r['seconds']:8.2f}s" if err is None else f"FAILED {err[:120]}"))
                # Records older than the "cpu" field ran on the machine of their example's first record.
                cpu = r.get("cpu") or (meta.get("machine") or {}).get("cpu") or "?"
                gen = done.get((ex["id"], f"__generation__ {cpu}"))
                same = (meta.get("machine") or {}).get("cpu", cpu) == cpu
                r = dict(r, cpu=cpu, generation_seconds=gen["seconds"] if gen else (
                    meta["generation_seconds"] if same else None))  # never a ratio across machines
                if r["error"] is None:
                    if len(r["scores"]) != len(gold["scores"]):
                        r["error"] = f"{len(r['scores'])} scores for {len(gold['scores'])} sentences"
                        r["metrics"] = None
                    else:
                        r["metrics"] = example_metrics(r["scores"], gold["scores"], ex, args.cite_k)
                rows[m.key].append(r)
                ex_rows[m.key] = {k: r.get(k) for k in ("seconds", "models", "metrics", "error", "extra", "scores")}
            per_example.append({
                "id": ex["id"], "answer_sha256": digest,  # ids and digests only: the data stays in ../shared/data
                "generation_seconds": meta["generation_seconds"], "answer_tokens": meta["answer_tokens"],
                "generation_seconds_by_cpu": {  # this answer's generation timed on each machine
                    **{(meta.get("machine") or {}).get("cpu", "?"): meta["generation_seconds"]},
                    **{v["cpu"]: v["seconds"] for k, v in done.items()
                       if k[0] == ex["id"] and k[1].startswith("__generation__ ")}},
                "prompt_tokens": meta["prompt_tokens"], "sentences": meta["sentences"],
                "documents": meta["documents"], "proxy_tokenizer": meta.get("proxy_tokenizer"),
                # no gold labels of the data (supporting facts): metrics read them from ../shared/data
                "machine": meta.get("machine"), "gold": {k: gold[k] for k in (
                    "scores", "seconds", "engine", "cached", "created")},
                "gold_outliers": np.flatnonzero(M.gold_outliers(gold["scores"])).tolist(), "methods": ex_rows,
            })

    summary = summarize(args, runner, dataset, examples, per_example, rows)
    # The command that computes these records (a --complete-only render of them reproduces nothing by itself).
    given = list(argv if argv is not None else sys.argv[1:])
    summary["command"] = " ".join(["python -m benchmarks.faithfulness", *(a for a in given if a != "--complete-only")])
    summary["rendered_complete_only"] = args.complete_only
    summary["run_seconds"] = time.perf_counter() - run_started
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    md = render_markdown(summary)
    (out / f"{stem}.md").write_text(md)
    plot_pareto(summary, out / f"{stem}_pareto.png")
    write_index(out)
    print(md)
    return summary


def write_index(out: Path) -> None:
    """``faithfulness.md``: every run's table in ``out``, each with its plot and the command that made it."""
    parts = ["# Faithfulness and speed vs exact leave-one-out", "",
             "Generated by `benchmarks/faithfulness.py` from the JSON files beside this one; do not edit by hand.", ""]
    for path in sorted(out.glob("faithfulness_*.json")):
        summary = json.loads(path.read_text())
        try:
            table = render_markdown(summary)
        except KeyError as exc:  # written by an older version of this script
            table = f"### {path.name}\n\n(older format, missing {exc}: rerun its command to refresh it)\n"
        parts += [table, f"![Pareto plot]({path.stem}_pareto.png)", "",
                  f"Reproduce: `{summary.get('command', '?')}`", ""]
    (out / "faithfulness.md").write_text("\n".join(parts))


def _json_default(x: Any) -> Any:
    if isinstance(x, (set, tuple)):
        return sorted(x) if isinstance(x, set) else list(x)
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def summarize(args: argparse.Namespace, runner: Runner, dataset: str, examples: list[dict],
              per_example: list[dict], rows: dict[str, list[dict]]) -> dict:
    """The run's JSON: settings, machine, aggregated table, Pareto front and per-example detail."""
    naive_seconds = {(r["example"], r["cpu"]): r["seconds"] for r in rows.get("naive-exact", [])
                     if r.get("error") is None}
    methods = {}
    for m in runner.methods:
        agg = aggregate(rows[m.key], naive_seconds)
        agg.update(label=m.label, kind=m.kind, strategy=dataclasses.asdict(m.strategy) if m.strategy else None)
        methods[m.key] = agg
    pm = args.pareto_metric
    points = {k: (v["seconds"], v[pm]["mean"] if pm in v else float("nan")) for k, v in methods.items()}
    front = M.pareto_front(points)
    default_key = runner.default_key if runner.default_key in methods else None
    verdict = M.dominates_report(default_key, points) if default_key else None
    by_metric = {}
    for metric in PARETO_METRICS:
        pts = {k: (v["seconds"], v[metric]["mean"] if metric in v else float("nan")) for k, v in methods.items()}
        by_metric[metric] = {"front": sorted(M.pareto_front(pts)),
                             "default": M.dominates_report(default_key, pts) if default_key else None}
    cc = [m for m in runner.methods if m.kind == "contextcite"]
    cc_impl = {r["extra"].get("implementation") for m in cc for r in rows[m.key] if r.get("extra")}
    cc_note = (f"ContextCite: {', '.join(sorted(x for x in cc_impl if x))} (the PyPI package) on the target model "
               "object, attribot-rag's sentences as its partition and prompt as its prompt, LASSO surrogate, "
               f"keep probability {args.contextcite_keep_prob}." if cc else "")
    naive_note = ""
    if (args.gold_engine != "exact" or runner.gold_dtype != runner.dtype) and "naive-exact" in methods:
        naive_note = (f"Naive exact LOO was run separately from gold, on {len(naive_seconds)} of {len(per_example)} "
                      f"examples (--naive-subset {args.naive_subset}); gold used the {args.gold_engine} engine in "
                      f"{runner.gold_dtype}.")
    n_no_outliers = sum(1 for e in per_example if not e["gold_outliers"])
    loads = [r["load_1m"] for rs in rows.values() for r in rs if r.get("load_1m") is not None]
    machine, n_machines = run_machine([e.get("machine") for e in per_example])
    # The methods' records name the CPU that timed them; where they agree, that is the table's machine (an
    # example's first record may come from another machine than the rows re-timed here).
    timed = {r["cpu"] for rs in rows.values() for r in rs if r.get("error") is None}
    threads = {r["torch_threads"] for rs in rows.values() for r in rs if r.get("torch_threads")}
    if len(timed) == 1 and timed != {machine.get("cpu")}:
        machine = dict(machine, cpu=timed.pop(), torch_threads=threads.pop() if len(threads) == 1 else None)
    tokenizer_paths = {e.get("proxy_tokenizer") for e in per_example} - {None}
    proxy_tokenizer = tokenizer_paths.pop() if len(tokenizer_paths) == 1 else (
        sorted(tokenizer_paths) if tokenizer_paths else None)

    def mean_of(key: str) -> float:
        return float(np.mean([e[key] for e in per_example])) if per_example else float("nan")

    # the answers' generation time on the table's machine, where each was timed there
    on_machine = [e.get("generation_seconds_by_cpu", {}).get(machine["cpu"]) for e in per_example]
    generation = (float(np.mean(on_machine)) if on_machine and all(g is not None for g in on_machine)
                  else mean_of("generation_seconds"))

    return {
        "benchmark": "faithfulness", "dataset": dataset, "data": args.data,
        "examples": len(per_example), "examples_requested": len(examples),
        "target": args.target, "proxy": args.proxy, "dtype": runner.dtype,
        "max_new_tokens": args.max_new_tokens, "cite_k": args.cite_k, "gold_engine": args.gold_engine,
        "gold_dtype": runner.gold_dtype,
        "squad_passages": args.squad_passages if dataset == "squad" else None,
        "hotpot_docs": (args.hotpot_docs or None) if dataset == "hotpotqa" else None,
        "mean_documents": mean_of("documents"),
        "gold_cached": sum(1 for e in per_example if e["gold"]["cached"]),
        "proxy_tokenizer": proxy_tokenizer, "machine": machine, "machines": n_machines,
        "load_seconds": runner.load_seconds, "generation_seconds": generation,
        "mean_answer_tokens": mean_of("answer_tokens"), "mean_prompt_tokens": mean_of("prompt_tokens"),
        "mean_sentences": mean_of("sentences"), "examples_without_outliers": n_no_outliers,
        "mean_load_1m": float(np.mean(loads)) if loads else float("nan"),
        "compute_seconds": sum(e["generation_seconds"] + e["gold"]["seconds"] for e in per_example) + sum(
            r["seconds"] for rs in rows.values() for r in rs
            if r.get("error") is None and not (r.get("extra") or {}).get("from_gold")),
        "default_method": default_key,
        "default_strategy": resolve_strategy("auto", runner.has_proxy).name,
        "default_verdict": verdict, "contextcite_note": cc_note, "naive_note": naive_note,
        "dtype_effect": M.dtype_effect(per_example) if runner.gold_dtype != runner.dtype else None,
        "pareto": {"metric": pm, "points": points, "front": sorted(front), "by_metric": by_metric},
        "methods": methods, "per_example": per_example,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


if __name__ == "__main__":
    main()
