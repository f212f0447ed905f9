"""The README's chain-prompt figures are generated from the committed benchmark JSON."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
RESULT = BENCH / "results" / "chain_prompt_smollm2-135m_d5.json"


def _module():
    spec = importlib.util.spec_from_file_location("chain_prompt", BENCH / "chain_prompt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not RESULT.exists(), reason="no chain-prompt run committed")
def test_readme_block_is_rendered_from_the_committed_json():
    import json

    mod = _module()
    text = mod.README.read_text()
    start, end = text.index(mod.MARKERS[0]) + len(mod.MARKERS[0]), text.index(mod.MARKERS[1])
    assert text[start:end].strip() == mod.render(json.loads(RESULT.read_text())).strip()


def test_render_counts_both_arms():
    mod = _module()
    arm = {"first_citation_gold_rate": 0.5, "no_citation": 1, "top_document_gold_rate": 0.75, "supported": 3}
    saved = {"settings": {"model": "m", "max_docs": 5, "strategy": "auto"},
             "summary": {"examples": 4, "chance_rate": 0.4, "chain": arm, "fixed": {**arm, "no_citation": 2},
                         "paired": {"top_document_differs": 1, "hit_chain_only": 1, "hit_fixed_only": 0,
                                    "top_hit_chain_only": 0, "top_hit_fixed_only": 0}}}
    out = mod.render(saved)
    assert "| the chain's own prompt (`prompt=`) | 0.50 | 1 of 4 | 0.75 | 3 of 4 |" in out
    assert "| the fixed template | 0.50 | 2 of 4 |" in out and "differs in 1 of 4" in out
