"""The faithfulness benchmark's runner on the tiny random model: what it keeps on disk, how it resumes,
and that rendering finished records loads no model."""

import json

import pytest

from benchmarks import faithfulness as F

SENTENCES = [
    ["Alpha river runs north.", " It floods in spring."],
    ["Beta hill is tall.", " Sheep graze there.", " It has a tower."],
    ["Gamma town sells bread.", " The bakery opens early."],
]


@pytest.fixture
def hotpot(tmp_path):
    """Two HotpotQA-shaped rows of made-up text."""
    path = tmp_path / "dev.jsonl"
    rows = []
    for k in range(2):
        rows.append({
            "id": f"ex{k}", "question": f"Which place is number {k}?", "answer": "Alpha",
            "context": {"title": [f"T{k}{d}" for d in range(3)], "sentences": SENTENCES},
            "supporting_facts": {"title": [f"T{k}0"], "sent_id": [0]},
        })
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _argv(data, out, model_dir, *extra):
    return ["--data", str(data), "--n", "2", "--target", str(model_dir), "--out", str(out), "--max-new-tokens", "6",
            "--methods", "naive-exact,cached-batched,hier-top3,random", "--gold-engine", "batched",
            "--naive-subset", "1", *extra]


def _records(out):
    (path,) = out.glob("*.records.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answers_kept_as_digests_and_resume_computes_nothing(hotpot, tmp_path, model_dir, monkeypatch):
    out = tmp_path / "out"
    generated = []
    original = F.Attributor.generate

    def spy(self, *a, **kw):
        text = original(self, *a, **kw)
        generated.append(text)
        return text

    monkeypatch.setattr(F.Attributor, "generate", spy)
    first = F.main(_argv(hotpot, out, model_dir))
    # an untimed warm-up generation (the first example's answer), then one per example
    assert first["examples"] == 2 and len(generated) == 3 and generated[0] == generated[1]
    records = _records(out)
    metas = [r for r in records if r["method"] == "__example__"]
    assert [m["answer_sha256"] for m in metas] == [F.answer_digest(a) for a in generated[1:]]
    # no answer text anywhere on disk: records, gold cache, summary
    written = [p for p in out.rglob("*") if p.suffix in {".json", ".jsonl", ".md"}]
    assert any(p.parent.name == "gold_cache" for p in written)
    for p in written:
        text = p.read_text()
        assert '"answer":' not in text, p
        for a in generated:
            if len(a.strip()) > 3:
                assert json.dumps(a)[1:-1] not in text, p
    # naive exact only inside --naive-subset 1; every other method on both examples
    assert sorted((r["example"], r["method"]) for r in records if r["method"] == "naive-exact") == [
        ("ex0", "naive-exact")]

    # Resume: nothing to do, so nothing is generated or recorded, and the table is the same.
    generated.clear()
    again = F.main(_argv(hotpot, out, model_dir))
    assert generated == [] and len(_records(out)) == len(records)
    assert again["methods"]["cached-batched"]["pearson"] == first["methods"]["cached-batched"]["pearson"]
    assert again["machine"] == first["machine"]


def test_complete_only_loads_no_model_and_reports_the_runs_machine(hotpot, tmp_path, model_dir, monkeypatch):
    out = tmp_path / "out"
    first = F.main(_argv(hotpot, out, model_dir))

    def no_load(*a, **kw):
        raise AssertionError("--complete-only loaded a model")

    monkeypatch.setattr(F, "load_model", no_load)
    monkeypatch.setattr(F, "machine_info", lambda: {"cpu": "the rendering box", "torch_threads": 99, "cuda": None})
    rendered = F.main(_argv(hotpot, out, model_dir, "--complete-only"))
    assert rendered["examples"] == 2 and rendered["rendered_complete_only"]
    assert rendered["machine"] == first["machine"] and rendered["machines"] == 1
    for key, row in first["methods"].items():
        assert rendered["methods"][key]["pearson"] == row["pearson"], key
    assert [e["gold"]["scores"] for e in rendered["per_example"]] == [e["gold"]["scores"] for e in first["per_example"]]


def test_changed_answer_on_resume_starts_the_example_over(hotpot, tmp_path, model_dir, monkeypatch):
    """Records of another answer than the one generation now gives (e.g. written on another machine):
    they are not reused."""
    out = tmp_path / "out"
    F.main(_argv(hotpot, out, model_dir))
    (path,) = out.glob("*.records.jsonl")
    lines = path.read_text().splitlines()
    stale = []
    for k, line in enumerate(lines):
        r = json.loads(line)
        if r["example"] == "ex1":
            r["answer_sha256"] = F.answer_digest("some other answer")
            lines[k] = json.dumps(r)
            stale.append(r["method"])
    path.write_text("\n".join(lines) + "\n")
    before = len(lines)
    F.main(_argv(hotpot, out, model_dir))
    added = [json.loads(x) for x in path.read_text().splitlines()[before:]]
    assert [r["method"] for r in added] == ["__example__", *[m for m in stale if m != "__example__"]]
    assert all(r["example"] == "ex1" for r in added)


def test_complete_only_skips_an_example_whose_gold_is_missing(hotpot, tmp_path, model_dir):
    out = tmp_path / "out"
    F.main(_argv(hotpot, out, model_dir))
    meta = next(r for r in _records(out) if r["example"] == "ex1" and r["method"] == "__example__")
    runner = F.Runner(F.parse_args(_argv(hotpot, out, model_dir)), "hotpotqa")
    ex = F.load_examples(hotpot, "hotpotqa", 2)[1]
    (out / "gold_cache" / f"{runner.gold_key(ex, meta['answer_sha256'])}.json").unlink()
    rendered = F.main(_argv(hotpot, out, model_dir, "--complete-only"))
    assert [e["id"] for e in rendered["per_example"]] == ["ex0"]


def test_records_with_answer_text_are_read_as_digests(tmp_path):
    """Records written before digests (answer text in the example record) still resume."""
    path = tmp_path / "r.jsonl"
    lines = [{"fingerprint": "f", "example": "e", "method": "__example__", "answer": "Paris."},
             {"fingerprint": "f", "example": "e", "method": "random", "error": None, "scores": [0.1]},
             {"fingerprint": "other", "example": "e", "method": "proxy", "error": None, "scores": [0.2]}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    done = F.load_records(path, "f")
    assert set(done) == {("e", "__example__"), ("e", "random")}
    assert "answer" not in done[("e", "__example__")]
    assert done[("e", "random")]["answer_sha256"] == done[("e", "__example__")]["answer_sha256"] == F.answer_digest(
        "Paris.")


def test_resume_with_one_method_missing_reuses_the_answer(hotpot, tmp_path, model_dir, monkeypatch):
    """The regenerated answer matches its digest: only the missing method runs, under the same example record."""
    out = tmp_path / "out"
    F.main(_argv(hotpot, out, model_dir))
    (path,) = out.glob("*.records.jsonl")
    kept = []
    for x in path.read_text().splitlines():
        r = json.loads(x)
        if r["example"] == "ex1" and r["method"] == "hier-top3":
            continue
        if r["example"] == "ex1" and r["method"] == "__example__":  # its answer was first timed elsewhere
            r["machine"] = dict(r["machine"], cpu="another CPU")
            x = json.dumps(r)
        kept.append(x)
    path.write_text("\n".join(kept) + "\n")
    calls = []
    original = F.Attributor.generate
    monkeypatch.setattr(F.Attributor, "generate", lambda self, *a, **kw: calls.append(1) or original(self, *a, **kw))
    summary = F.main(_argv(hotpot, out, model_dir))
    added = [json.loads(x) for x in path.read_text().splitlines()[len(kept):]]
    # the regenerated answer's time is recorded for this machine (time ratios divide times taken on one machine)
    gen = f"__generation__ {F._cpu_model()}"
    assert len(calls) == 2 and [(r["example"], r["method"]) for r in added] == [("ex1", gen), ("ex1", "hier-top3")]
    assert added[0]["seconds"] > 0 and added[1]["cpu"] == F._cpu_model()
    # the same run's summary already pairs this machine's rows with that generation time
    ex1 = next(e for e in summary["per_example"] if e["id"] == "ex1")
    assert ex1["generation_seconds_by_cpu"][F._cpu_model()] == added[0]["seconds"]


def test_run_machine_is_the_records_most_common_setting():
    a = {"cpu": "x", "torch_threads": 1, "load_average_1m": 0.5}
    b = {"cpu": "x", "torch_threads": 2, "load_average_1m": 1.5}
    machine, n = F.run_machine([a, dict(a, load_average_1m=3.0), b, None])
    assert machine["torch_threads"] == 1 and n == 2 and "load_average_1m" not in machine
    _, none = F.run_machine([None])
    assert none == 0


def test_committed_results_hold_no_answer_text():
    """Benchmark results keep answer digests: generated answers quote the evaluation data."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [p for d in ("benchmarks/results", "integrations/langchain/benchmarks/results",
                         "integrations/llama_index/benchmarks/results")
             for p in (root / d).rglob("*") if p.suffix in {".json", ".jsonl", ".md"}]
    assert len(files) > 20
    offenders = [str(p.relative_to(root)) for p in files if '"answer":' in p.read_text()]
    assert offenders == []


def test_retime_generation_records_each_answers_time_and_runs_no_method(hotpot, tmp_path, model_dir, monkeypatch):
    """--retime-generation: one untimed warm-up, then every recorded answer regenerated and timed; nothing else."""
    out = tmp_path / "out"
    F.main(_argv(hotpot, out, model_dir))
    (path,) = out.glob("*.records.jsonl")
    before = len(path.read_text().splitlines())
    calls = []
    original = F.Attributor.generate
    monkeypatch.setattr(F.Attributor, "generate", lambda self, *a, **kw: calls.append(1) or original(self, *a, **kw))
    ran = []
    monkeypatch.setattr(F, "run_strategy", lambda *a, **kw: ran.append(1))
    F.main(_argv(hotpot, out, model_dir, "--retime-generation"))
    added = [json.loads(x) for x in path.read_text().splitlines()[before:]]
    gen = f"__generation__ {F._cpu_model()}"
    assert [(r["example"], r["method"]) for r in added] == [("ex0", gen), ("ex1", gen)]
    assert len(calls) == 3 and ran == []  # the warm-up, then one timed generation per example
    assert all(r["seconds"] > 0 for r in added)
