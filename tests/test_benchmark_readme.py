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


def test_stale_readme_is_reported(tmp_path, capsys):
    runs = readme_table.load("qwen2.5-coder-0.5b", "smollm2-135m")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme_table.START}\n| hand-typed | 0.999 |\n{readme_table.END}\noutro\n")
    assert readme_table.main(["--check", "--readme", str(readme)]) == 1
    assert "benchmarks.readme_table --write" in capsys.readouterr().err
    assert readme_table.main(["--write", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "hand-typed" not in text
    assert readme_table.render(runs) in text
    assert readme_table.main(["--check", "--readme", str(readme)]) == 0


def test_readme_without_markers_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="faithfulness-table:start"):
        readme_table.splice("no markers here", "block")
    (tmp_path / "faithfulness_hotpotqa_x.json").write_text(json.dumps({}))
    with pytest.raises(FileNotFoundError, match="run benchmarks.faithfulness"):
        readme_table.load("x", None, results=tmp_path)
