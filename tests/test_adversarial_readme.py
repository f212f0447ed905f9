"""The README's Reliability block is rendered from the committed ``benchmarks/results/reliability.json``,
and that file lists every case of ``tests/test_adversarial.py``, each handled (or a known open one)."""

import json

from benchmarks.reliability import RESULT, ROOT, collect_cases, render, splice


def _data() -> dict:
    return json.loads(RESULT.read_text(encoding="utf-8"))


def test_readme_block_is_the_committed_json():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert splice(readme, render(_data())) == readme, "run: python -m benchmarks.reliability --render-only --write"


def test_json_lists_every_case_of_the_suite():
    committed = {(c["test"], c["kind"], c["what"], c["files"]) for c in _data()["cases"]}
    collected = {(c["test"], c["kind"], c["what"], c["files"]) for c in collect_cases(run=False)}
    assert committed == collected, "the suite changed: rerun python -m benchmarks.reliability --write"


def test_every_committed_case_was_handled():
    data = _data()
    assert all(c["outcome"] in ("passed", "xfailed") for c in data["cases"]), [
        c["what"] for c in data["cases"] if c["outcome"] not in ("passed", "xfailed")]
    assert sum(r["tried"] for r in data["summary"].values()) == len(data["cases"])
    rows = {(r["documents"], r["policy"]): r for r in data["overflow"]["rows"]}
    assert rows[(5000, "drop_last")]["kept"] + rows[(5000, "drop_last")]["dropped"] == 5000
