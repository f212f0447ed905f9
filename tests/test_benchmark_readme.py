"""The README's faithfulness table is generated from the committed result JSON, never typed."""

import copy
import json

import pytest

from benchmarks import readme_table


def test_readme_table_matches_committed_results():
    assert readme_table.main(["--check"]) == 0, "run: python -m benchmarks.readme_table --write"


def test_table_reads_every_figure_from_the_json(tmp_path):
    runs = readme_table.load("qwen2.5-coder-0.5b", "smollm2-135m")
    edited = copy.deepcopy(runs)
    default = edited["hotpotqa"]["default_method"]
    edited["hotpotqa"]["methods"][default]["pearson"]["mean"] = 0.1234
    edited["squad"]["methods"][default]["seconds"] = 98.76
    before, after = readme_table.render(runs), readme_table.render(edited)
    row = next(line for line in after.splitlines() if "**(default)**" in line)
    assert "0.123" in row and "98.8" in row
    assert before != after


def test_partial_and_missing_runs_are_labelled():
    runs = copy.deepcopy(readme_table.load("qwen2.5-coder-0.5b", "smollm2-135m"))
    runs["hotpotqa"]["examples_requested"] = runs["hotpotqa"]["examples"] + 13
    del runs["squad"]
    text = readme_table.render(runs)
    n = runs["hotpotqa"]["examples"]
    assert f"**{n} of the {n + 13} dev examples asked for** (partial run" in text
    assert "**SQuAD**: not run yet" in text and "SQuAD Pearson" not in text


def test_stale_readme_is_reported(tmp_path, capsys):
    runs = readme_table.load("qwen2.5-coder-0.5b", "smollm2-135m")
    start, end = readme_table.markers("cross-tokenizer")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{start}\n| hand-typed | 0.999 |\n{end}\noutro\n")
    args = ["--readme", str(readme)]  # default: the blocks this README holds
    assert readme_table.main(["--check", *args]) == 1
    assert "benchmarks.readme_table --write" in capsys.readouterr().err
    assert readme_table.main(["--write", *args]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "hand-typed" not in text
    assert readme_table.render(runs) in text
    assert readme_table.main(["--check", *args]) == 0


def test_readme_without_markers_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="faithfulness-table:cross-tokenizer:start"):
        readme_table.splice("no markers here", "block", "cross-tokenizer")
    (tmp_path / "README.md").write_text("no markers here")
    with pytest.raises(SystemExit, match="no faithfulness-table block"):
        readme_table.main(["--check", "--readme", str(tmp_path / "README.md")])
    (tmp_path / "unrelated.json").write_text(json.dumps({}))
    with pytest.raises(FileNotFoundError, match="run benchmarks.faithfulness"):
        readme_table.load("x", None, results=tmp_path)
