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


def test_speed_goals_are_checked_from_the_json():
    """Issue #17's goals: >= 20x over naive (same machine) at outlier mAP >= the default's; <= generation time."""
    main, timing = readme_table.load_goals("qwen2.5-coder-0.5b", "smollm2-135m")
    ds = next(iter(timing))
    edited = copy.deepcopy(timing)
    masked = edited[ds]["methods"]["masked"]
    masked.update(speedup_vs_naive=25.0, attribution_over_generation=0.8)
    default = main[ds]["default_method"]
    better = copy.deepcopy(main)
    better[ds]["methods"]["masked"]["outlier_ap"]["mean"] = better[ds]["methods"][default]["outlier_ap"]["mean"]
    row = next(line for line in readme_table.render_goals(better, edited).splitlines()
               if line.startswith("| masked LOO, all"))
    assert row.endswith("| 25.0 (" + row.split("| 25.0 (")[1].split(")")[0] + ") | 0.8 | yes | yes |")
    worse = copy.deepcopy(better)
    worse[ds]["methods"]["masked"]["outlier_ap"]["mean"] -= 0.01
    row = next(line for line in readme_table.render_goals(worse, edited).splitlines()
               if line.startswith("| masked LOO, all"))
    assert "| no: mAP " in row and row.endswith("| yes |")
    # the committed timing: the block names the machine that timed every row
    text = readme_table.render_goals(main, timing)
    assert f"timed on {timing[ds]['machine']['cpu']}" in text


def test_speed_goals_without_a_timing_run_say_so(tmp_path):
    """A setting whose same-machine timing has not run yet renders a line per dataset saying so."""
    src = readme_table.RESULTS
    for p in src.glob("faithfulness_*_qwen2.5-coder-0.5b_proxy_smollm2-135m.json"):
        (tmp_path / p.name).write_text(p.read_text())
    main, timing = readme_table.load_goals("qwen2.5-coder-0.5b", "smollm2-135m", results=tmp_path)
    assert main and timing == {}
    text = readme_table.render_goals(main, timing)
    assert text.splitlines()[0] == "**HotpotQA**: no same-machine timing run yet."


def test_speed_goals_cost_model_is_computed_from_the_timing_json():
    """The 20x token budget is naive's forward tokens / 20; methods are listed only when they fit it."""
    _, timing = readme_table.load_goals("qwen2.5-coder-0.5b", "smollm2-135m")
    t = copy.deepcopy(timing[next(iter(timing))])
    naive = sum(v["forward_tokens"] for v in t["methods"]["naive-exact"]["models"].values())
    text = readme_table._exact_budget(t)
    assert f"leaves {naive / 20:,.0f} forward tokens" in text
    fitting = [m["label"] for m in t["methods"].values()
               if sum(v["forward_tokens"] for v in m["models"].values()) <= naive / 20]
    assert all(f"*{label}*" in text for label in fitting)
    assert f"*{t['methods'][t['default_method']]['label']}*" not in text
    for m in t["methods"].values():  # every method at naive's tokens or more: none fits
        for v in m["models"].values():
            v["forward_tokens"] = max(v["forward_tokens"], naive)
    assert readme_table._exact_budget(t).endswith("Within that budget: no method.")
