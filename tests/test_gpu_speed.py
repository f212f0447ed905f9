"""The real-shape speed benchmark's mechanics, on CPU with tiny shapes (the real run needs a GPU)."""

import json

import pytest
import torch

from attribot_rag.testing import tiny_tokenizer
from benchmarks import gpu_speed
from benchmarks.common import DEFAULT_HOTPOT


def test_published_shapes_are_the_real_ones():
    t, p = gpu_speed.SHAPES["llama-3.1-8b"], gpu_speed.SHAPES["llama-3.2-1b"]
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_key_value_heads"]) == (4096, 32, 8)
    assert (p["hidden_size"], p["num_hidden_layers"], p["num_key_value_heads"]) == (2048, 16, 8)
    assert t["vocab_size"] == p["vocab_size"] == 128256


def test_random_model_has_the_shape_and_refuses_bad_ones():
    tok = tiny_tokenizer()
    m = gpu_speed.random_model("tiny", tok, "cpu", torch.float32, seed=0)
    assert m.model.config.num_hidden_layers == 2 and m.model.config.vocab_size == 49152
    with pytest.raises(SystemExit, match="unknown shape"):
        gpu_speed.random_model("llama-9000", tok, "cpu", None, seed=0)


@pytest.mark.skipif(not DEFAULT_HOTPOT.exists(), reason="needs ../shared/data")
def test_tiny_run_writes_results(tmp_path):
    tok_dir = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(tok_dir)
    summary = gpu_speed.main(["--n", "1", "--docs", "2", "--target-shape", "tiny", "--proxy-shape", "tiny",
                              "--device", "cpu", "--dtype", "fp32", "--tokenizer", str(tok_dir),
                              "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_speed_tiny_proxy_tiny_fp32.json").read_text())
    assert saved == summary and summary["examples"] == 1 and summary["weights"] == "random"
    assert set(summary["methods"]) == set(gpu_speed.STRATEGIES)
    assert summary["methods"]["naive exact LOO"]["speedup_vs_naive"] == pytest.approx(1.0)
    assert all(m["seconds"] > 0 and m["attribution_over_generation"] > 0 for m in summary["methods"].values())
    assert summary["mean_prompt_tokens"] > 100 and summary["docs"] == 2
    table = (tmp_path / "gpu_speed_tiny_proxy_tiny_fp32.md").read_text()
    assert "| default (auto = hierarchical, top-3 docs) |" in table


def test_tokenizer_of_an_embedded_model_loads_no_weights(monkeypatch, tmp_path):
    """Only the tokenizer is needed for the random-weight models: the embedded model's weights are not loaded."""
    from attribot_rag import models

    monkeypatch.setattr(models.loading, "load_model", lambda *a, **k: pytest.fail("load_model was called"))
    folder = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(folder)
    monkeypatch.setattr(models, "pull", lambda name: tmp_path / "x.gguf")
    monkeypatch.setattr(models, "convert_gguf", lambda gguf, sha256=None: folder)
    tok = gpu_speed.load_tokenizer("smollm2-135m")
    assert len(tok) == len(tiny_tokenizer())
    assert len(gpu_speed.load_tokenizer(str(folder))) == len(tok)
