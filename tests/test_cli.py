"""The attribot-rag command line, on a tiny local model folder."""

import json

import pytest

from attribot_rag import DocsFileError
from attribot_rag.cli import main
from attribot_rag.docs_io import EXAMPLE_DOCS, load_docs


@pytest.fixture
def docs_file(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text("\n".join(json.dumps(d) for d in [
        {"id": "a", "text": "Paris is the capital of France. Berlin is in Germany.", "url": "http://a"},
        {"id": "b", "text": "The Eiffel Tower was built in 1889. Gustave Eiffel built it."},
    ]))
    return p


def _cite(capsys, model_dir, *args):
    code = main(["cite", "Who built the tower?", "--target", str(model_dir), "--dtype", "fp32",
                 "--no-progress", *args])
    return code, capsys.readouterr()


def test_cite_json_is_stable(capsys, model_dir, docs_file):
    code, out = _cite(capsys, model_dir, "--docs", str(docs_file), "--answer", "Gustave Eiffel built it.",
                      "--json", "--strategy", "batched", "--top-k", "3")
    assert code == 0, out.err
    d = json.loads(out.out)
    assert set(d) == {"question", "answer", "strategy", "citations", "sources", "timing", "supported",
                      "answer_sentences"}
    assert d["answer"] == "Gustave Eiffel built it."
    assert d["supported"] is False  # a random model's context does not support the answer
    assert d["answer_sentences"] == [{"text": "Gustave Eiffel built it.", "start": 0, "end": 24, "supported": False,
                                      "score": d["answer_sentences"][0]["score"]}]
    assert isinstance(d["answer_sentences"][0]["score"], float)
    assert len(d["citations"]) <= 3
    for c in d["citations"]:
        assert set(c) >= {"source_id", "sentence", "start", "end", "score", "share"}
    assert [s["id"] for s in d["sources"]] == ["a", "b"]
    assert all(set(s) == {"id", "score", "share", "used"} for s in d["sources"])


def test_cite_without_context_support_ranks_only(capsys, model_dir, docs_file):
    args = ("--docs", str(docs_file), "--answer", "Gustave Eiffel built it.", "--json", "--strategy", "batched")
    code, out = _cite(capsys, model_dir, *args, "--no-context-support")
    assert code == 0, out.err
    bare = json.loads(out.out)
    code, out = _cite(capsys, model_dir, *args)
    full = json.loads(out.out)
    assert bare["supported"] is None and full["supported"] is False  # no verdict without the passes
    passes = [d["timing"]["context_support"]["forward_passes"] for d in (bare, full)]
    assert passes[0] == 0 < passes[1]
    assert [s["score"] for s in bare["sources"]] == pytest.approx([s["score"] for s in full["sources"]], abs=1e-5)


def test_cite_table_generates_answer(capsys, model_dir, docs_file):
    code, out = _cite(capsys, model_dir, "--docs", str(docs_file), "--max-new-tokens", "6")
    assert code == 0, out.err
    assert "Citations" in out.out and "Answer:" in out.out


@pytest.mark.parametrize("content,suffix,match", [
    ('{"id": "a", "text": "ok"}\n{not json}\n', ".jsonl", "line 2"),
    ('{"id": "a"}\n', ".jsonl", "no 'text'"),
    ('{"text": "no id"}\n', ".jsonl", "no 'id'"),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', ".jsonl", "duplicate"),
    ('{"documents": 3}', ".json", "list of documents"),
    ("", ".jsonl", "no documents"),
    ("id,text\n", ".csv", "unsupported"),
    ('{"id": null, "text": "x"}\n', ".jsonl", "no 'id'"),
    ('{"id": "a", "text": "x"}\n{"id": "b", "text": "y", "metadata": 5}\n', ".jsonl", r"line 2: 'metadata'"),
    ('[{"id": "a", "text": "x"}, {"id": "b", "sentences": "abc"}]', ".json", r"document 1: 'sentences'"),
    ('{"id": "a", "text": "x", "score": NaN}\n', ".jsonl", "NaN is not a JSON value"),
    ("[" * 100_000 + "]" * 100_000, ".json", "not valid JSON"),
])
def test_malformed_docs_files(tmp_path, capsys, model_dir, content, suffix, match):
    p = tmp_path / f"docs{suffix}"
    p.write_text(content)
    with pytest.raises(DocsFileError, match=match):
        load_docs(p)
    code, out = _cite(capsys, model_dir, "--docs", str(p))
    assert code == 2 and "error:" in out.err and "Traceback" not in out.err


def test_docs_folder_and_bundled_example(tmp_path):
    (tmp_path / "one.txt").write_text("First doc. It has two sentences.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "two.md").write_text("Second doc.")
    docs = load_docs(tmp_path)
    assert [d.id for d in docs] == ["one.txt", "sub/two.md"]
    assert len(load_docs(EXAMPLE_DOCS)) >= 5


def test_cli_errors_are_clean(capsys, model_dir, docs_file, tmp_path):
    assert main(["cite", "Q?", "--docs", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    code, out = _cite(capsys, model_dir, "--docs", str(docs_file), "--answer", "  ")
    assert code == 2 and "answer is empty" in out.err
    for bad in ("0", "-1"):  # before any model loads: the target does not exist
        assert main(["cite", "Q?", "--docs", str(docs_file), "--target", "nope", "--max-new-tokens", bad]) == 2
        assert "--max-new-tokens must be >= 1" in capsys.readouterr().err
    assert main(["cite", "Q?", "--docs", "", "--answer", "x."]) == 2  # an empty path is not the bundled example
    assert "docs path is empty" in capsys.readouterr().err
    assert main(["cite", "Q?", "--docs", str(docs_file), "--target", "not-a-model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    # --proxy with a strategy that ignores it fails before loading anything (the proxy name is not even resolved)
    assert main(["cite", "Q?", "--docs", str(docs_file), "--target", "not-a-model", "--proxy", "nope"]) == 2
    err = capsys.readouterr().err
    assert "does not use the proxy 'nope'" in err and "proxy-prune" in err


def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "qwen2.5-coder-1.5b" in out


def test_docs_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    """json.dumps(..., ensure_ascii=False) writes U+2028/U+2029/U+0085 raw; they are not line breaks in JSONL."""
    p = tmp_path / "docs.jsonl"
    texts = ["Line one.\u2028Line two.", "Para.\u2029Next.\x85End.", "Other doc."]
    p.write_text("".join(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\r\n"
                         for i, t in enumerate(texts)), encoding="utf-8")
    assert [d.text for d in load_docs(p)] == texts


def test_docs_byte_order_mark_and_hidden_folders(tmp_path):
    """Notepad/Excel write a UTF-8 BOM; hidden folders (.ipynb_checkpoints, .git) hold no documents."""
    p = tmp_path / "docs.jsonl"
    p.write_text('{"id": "a", "text": "First doc."}\n', encoding="utf-8-sig")
    assert [d.text for d in load_docs(p)] == ["First doc."]
    folder = tmp_path / "folder"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    (folder / "a.md").write_text("First doc.", encoding="utf-8-sig")
    (folder / ".ipynb_checkpoints" / "a-checkpoint.md").write_text("First doc.")
    (folder / ".hidden.txt").write_text("Secret.")
    docs = load_docs(folder)
    assert [(d.id, d.text) for d in docs] == [("a.md", "First doc.")]
