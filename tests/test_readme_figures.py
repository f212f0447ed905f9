"""The hand-written benchmark figures in the READMEs match the committed result files.

(The faithfulness tables are generated and checked by ``test_benchmark_readme.py``; these are the
figures typed into prose and small tables, which would otherwise drift from their JSON silently.)
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
LANGCHAIN = ROOT / "integrations" / "langchain"
LLAMA = ROOT / "integrations" / "llama_index"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _rates(rows: list[dict]) -> dict[str, float]:
    n = len(rows)
    keys = ("top_reranked_is_gold", "top_retrieved_is_gold", "top_citation_sentence_is_gold", "answer_contains_gold")
    out = {k: sum(r[k] for r in rows) / n for k in keys}
    out["chance"] = sum(r["chance"] for r in rows) / n
    return out


def test_core_top_document_figures():
    s = _load(ROOT / "benchmarks" / "results" / "hotpot_top_document_smollm2-135m.json")["summary"]
    assert (f"| top-ranked document is a gold supporting document | **{s['top1_document_gold_rate']:.0%}** | "
            f"{s['chance_rate']:.0%} |") in README
    assert f"| top-ranked sentence is a gold supporting sentence | {s['top1_sentence_gold_rate']:.0%} | " in README
    # The run predates the sentence chance field; the README gives the command computing it from the data.
    from benchmarks.common import DEFAULT_HOTPOT, hotpot_examples

    if DEFAULT_HOTPOT.exists():
        exs = hotpot_examples(DEFAULT_HOTPOT, n=s["examples"])
        chance = sum(len(e["gold_sentences"]) / sum(len(x.sentences) for x in e["sources"]) for e in exs) / len(exs)
        assert f"| top-ranked sentence is a gold supporting sentence | {s['top1_sentence_gold_rate']:.0%} | " \
               f"{chance:.0%} |" in README


def test_langchain_chain_figures():
    d = _load(LANGCHAIN / "benchmarks" / "results" / "hotpot_chain_smollm2-135m_k5.json")
    s, rows = d["summary"], d["rows"]
    hits = sum(r["hit"] for r in rows)
    assert hits / len(rows) == s["first_citation_gold_rate"]
    assert (f"| LangChain LCEL chain | {s['examples']} | {s['first_citation_gold_rate']:.2f} | "
            f"{s['chance_rate']:.2f} |") in README
    text = (LANGCHAIN / "README.md").read_text(encoding="utf-8")
    assert f"**{hits} of {len(rows)} examples ({s['first_citation_gold_rate']:.2f})**" in text
    assert f"against a chance rate\nof {s['chance_rate']:.2f}" in text


def test_llamaindex_query_engine_figures():
    results = LLAMA / "benchmarks" / "results"
    smol = _load(results / "hotpot_query_engine_smollm2-135m.json")
    qwen = _load(results / "hotpot_query_engine_qwen2.5-coder-0.5b_scored_by_smollm2-135m.json")
    text = (LLAMA / "README.md").read_text(encoding="utf-8")
    for label, rows in (("SmolLM2-135M → SmolLM2-135M (`--n 50`)", smol["rows"]),
                        ("same run, its first 20 examples", smol["rows"][:20]),
                        ("Qwen2.5-Coder-0.5B → SmolLM2-135M (`--n 20 --generator qwen2.5-coder-0.5b`)", qwen["rows"])):
        r = _rates(rows)
        row = (f"| {label} | {len(rows)} | **{r['top_reranked_is_gold']:.2f}** | {r['chance']:.2f} | "
               f"{r['top_retrieved_is_gold']:.2f} | {r['top_citation_sentence_is_gold']:.2f} | "
               f"{r['answer_contains_gold']:.2f} |")
        assert row in text, row
    s = smol["summary"]
    assert (f"| LlamaIndex query engine | {s['examples']} | {s['top_reranked_node_gold_rate']:.2f} | "
            f"{s['chance_rate']:.2f} |") in README
    q = qwen["summary"]
    assert (f"the top re-ranked node was gold in {q['top_reranked_node_gold_rate']:.2f} of {q['examples']} "
            f"examples (chance {q['chance_rate']:.2f};") in " ".join(README.split())


def test_memory_and_throughput_figures():
    results = ROOT / "benchmarks" / "results"
    m = _load(results / "peak_memory_smollm2-135m.json")
    table = (results / "peak_memory_smollm2-135m.md").read_text(encoding="utf-8").strip()
    assert table in README  # the generated table, every strategy's row
    for run in m["runs"]:
        assert f"`{run['strategy']}`" in table and f"{run['peak_extra_mib']:.0f} MiB" in table
    assert f"One {m['sequence_tokens']:,}-token prompt ({m['sources']} HotpotQA paragraphs" in README
    throughput = _load(ROOT / "benchmarks" / "results" / "batch_throughput_smollm2-135m.json")
    runs = {r["setting"]: r for r in throughput["runs"]}
    for name, label in (("local-1t", "local, 1 process x 1 torch thread"),
                        ("local-2t", "local, 1 process x 2 torch threads"),
                        ("ray-2x1", "ray, local instance with 2 CPUs, 2 actors x 1 CPU / 1 thread")):
        r = runs[name]
        assert (f"| {label} | {r['wall_seconds']:.1f} | {r['records_per_second']:.2f} | "
                f"{r['mean_record_seconds']:.1f} |") in README, label
    best_local = max(runs["local-1t"]["records_per_second"], runs["local-2t"]["records_per_second"])
    assert f"by {runs['ray-2x1']['records_per_second'] / best_local:.2f}x" in README


def test_gpu_speed_figures():
    stem = "gpu_speed_llama-3.1-8b_proxy_llama-3.2-1b_bf16"
    results = ROOT / "benchmarks" / "results"
    assert (results / f"{stem}.md").read_text(encoding="utf-8").strip() in README  # the generated table
    m = _load(results / f"{stem}.json")["methods"]
    default = m["default (auto = hierarchical, top-3 docs)"]
    assert f"default is {default['speedup_vs_naive']:.1f}x faster than naive exact LOO" in README
    assert f"({default['attribution_over_generation']:.2f}x) with the default" in " ".join(README.split())
    cached = m["cached+batched exact LOO"]["speedup_vs_naive"]
    assert f"cached+batched is {cached:.1f}x naive" in " ".join(README.split())
