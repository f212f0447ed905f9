"""The notebooks in notebooks/ run top to bottom (nbclient, a fresh kernel each), offline.

A notebook that breaks fails the test run. Executed copies are written to
``tests/artifacts/notebooks/`` for inspection. Notebooks keep no outputs in git, except the
benchmark one, whose figures are the point.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -r requirements-dev.txt (nbformat, nbclient)")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ARTIFACTS = Path(__file__).parent / "artifacts" / "notebooks"
KEEPS_OUTPUTS = {"04_benchmark_results.ipynb"}  # its figures are the point
NEEDS_MODELS = {"01_quickstart.ipynb", "02_langchain_rag_chain.ipynb", "03_llamaindex_query_engine.ipynb"}


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_langchain_rag_chain.ipynb",
                                           "03_llamaindex_query_engine.ipynb", "04_benchmark_results.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped_in_git(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    if path.name in KEEPS_OUTPUTS:
        return
    dirty = [i for i, c in enumerate(book.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


def _execute(path: Path, artifact: str, env: dict[str, str] | None = None):
    """Run ``path`` in a fresh kernel (cwd: its folder); the executed copy goes to the artifacts."""
    book = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})  # the kernel inherits this process's environment
    client = nbclient.NotebookClient(book, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    try:
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(book, ARTIFACTS / artifact)
    print(f"{artifact}: {time.perf_counter() - started:.1f}s")
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    return book


def _images(book) -> list:
    return [o for c in book.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    if path.name in NEEDS_MODELS and os.environ.get("ATTRIBOT_SKIP_REAL_MODELS"):
        pytest.skip("ATTRIBOT_SKIP_REAL_MODELS is set")
    book = _execute(path, path.name)
    if path.name in ("01_quickstart.ipynb", "02_langchain_rag_chain.ipynb", "03_llamaindex_query_engine.ipynb"):
        html = [o for c in book.cells if c.cell_type == "code" for o in c.outputs
                if "text/html" in o.get("data", {}) and 'class="ab-root"' in o["data"]["text/html"]]
        assert html, f"{path.name} displayed no HTML citation view"
    else:
        assert len(_images(book)) >= 2, f"{path.name} drew {len(_images(book))} figures"


@pytest.mark.slow
def test_benchmark_notebook_draws_a_committed_faithfulness_result(tmp_path):
    """The Pareto cell on a stand-in summary in the shape ``benchmarks/faithfulness.py`` writes
    (made-up numbers, never committed), independent of which real runs are committed."""
    import shutil

    for f in (ROOT / "benchmarks" / "results").glob("*.json"):
        if not f.name.startswith("faithfulness_"):
            shutil.copy(f, tmp_path / f.name)
    points = {"exact": [30.0, 1.0], "hierarchical": [8.0, 0.9], "proxy": [12.0, 0.7], "random": [0.001, float("nan")]}
    summary = {
        "benchmark": "faithfulness", "dataset": "hotpotqa", "examples": 2, "target": "stand-in", "proxy": None,
        "dtype": "fp32", "default_method": "hierarchical",
        "pareto": {"metric": "pearson", "points": points, "front": ["exact", "hierarchical", "random"]},
        "methods": {k: {"label": k} for k in points},
    }
    (tmp_path / "faithfulness_hotpotqa_stand-in.json").write_text(json.dumps(summary))
    path = ROOT / "notebooks" / "04_benchmark_results.ipynb"
    book = _execute(path, "04_benchmark_results_with_faithfulness.ipynb", {"ATTRIBOT_RESULTS_DIR": str(tmp_path)})
    assert len(_images(book)) == 3
    text = "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.outputs)
    assert "No faithfulness result" not in text
