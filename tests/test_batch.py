"""``attribot-rag batch``: rows and error rows, JSONL/Parquet, resume after a kill, local == Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attribot_rag import BatchError, ConfigError, UnknownModelError
from attribot_rag.batch import _Lock, plan_shards, read_output, run_batch
from attribot_rag.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    {"id": "paris", "text": "Paris is the capital of France. Berlin is in Germany."},
    {"id": "tower", "text": "The Eiffel Tower was built in 1889. Gustave Eiffel built it. The dog is lazy."},
    "The quick brown fox\u2028jumps over the lazy dog.",  # U+2028: a line break to str.splitlines()
]
# Planted bad records (JSON text of one line) and the error type their row must carry.
BAD = [
    ("{not json", "InputError: record"),
    ("[1, 2]", "InputError: the record is a list"),
    (json.dumps({"id": "no-answer", "question": "q", "documents": ["x"]}), "InputError: the record has no 'answer'"),
    (json.dumps({"id": "no-docs", "question": "q", "answer": "a."}), "InputError: the record has no 'documents'"),
    (json.dumps({"id": "empty-answer", "question": "q", "documents": ["x"], "answer": "  "}), "EmptyAnswerError"),
    (json.dumps({"id": "zero-docs", "question": "q", "documents": [], "answer": "a."}), "NoSourcesError"),
    (json.dumps({"id": "docs-str", "question": "q", "documents": "just text", "answer": "a."}),
     "InputError: 'documents' is a str"),
    (json.dumps({"id": "too-long", "question": "q", "documents": ["word " * 3000], "answer": "ok."}),
     "ContextTooLongError"),
]
COMMON = dict(dtype="fp32", threads=1, progress=False)  # fp32, 1 thread: identical numbers in every process


def _good(i: int) -> dict:
    docs = DOCS[i % 3:] + DOCS[: i % 3]
    answer = ["Gustave Eiffel built it in 1889.", "Paris is the capital. Berlin is in Germany."][i % 2]
    return {"id": f"r{i}", "question": "Who built the tower?", "documents": docs, "answer": answer}


def _write_jsonl(path: Path, n_good: int, bad: bool = True) -> Path:
    lines = [json.dumps(_good(i)) for i in range(n_good)]
    if bad:  # spread the bad records between good ones
        for k, (text, _) in enumerate(BAD):
            lines.insert(min(len(lines), 1 + 3 * k), text)
        lines.insert(2, "")  # a blank line is not a record
    path.write_text("\n".join(lines) + "\n")
    return path


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "timing"} for r in rows]


@pytest.fixture(scope="module")
def small(tmp_path_factory, model_dir):
    """12 good + 8 bad records, run once locally: (input, output folder, summary)."""
    d = tmp_path_factory.mktemp("small")
    inp = _write_jsonl(d / "in.jsonl", 12)
    summary = run_batch(inp, d / "out", target=str(model_dir), shard_size=4, **COMMON)
    return inp, d / "out", summary


def test_rows_and_error_rows(small):
    inp, out, summary = small
    rows = read_output(out)
    assert [r["index"] for r in rows] == list(range(20))
    assert (summary.records, summary.ok, summary.failed, summary.written, summary.skipped) == (20, 12, 8, 20, 0)
    assert json.loads((out / "_summary.json").read_text())["failed"] == 8
    assert sorted(p.name for p in out.iterdir()) == ["_job.json", "_lock", "_summary.json"] + [
        f"part-{i:06d}.jsonl" for i in range(5)]
    good = [r for r in rows if r["error"] is None]
    assert [r["id"] for r in good] == [f"r{i}" for i in range(12)]
    for r in good:
        assert list(r) == ["index", "id", "question", "answer", "strategy", "supported", "citations", "sources",
                           "dropped_sources", "error", "timing"]
        assert r["supported"] is False  # a random model's context does not support its answer
        assert r["strategy"] == "hierarchical"
        assert 1 <= len(r["citations"]) <= 5
        assert [c["rank"] for c in r["citations"]] == list(range(1, len(r["citations"]) + 1))
        assert set(r["citations"][0]) == {"rank", "source_id", "sentence", "start", "end", "score", "share",
                                          "answer_sentences"}
        docs = _good(int(r["id"][1:]))["documents"]  # a string document's id is its position
        assert [s["id"] for s in r["sources"]] == [d["id"] if isinstance(d, dict) else str(j)
                                                   for j, d in enumerate(docs)]
        assert r["timing"]["forward_passes"] > 0 and r["timing"]["seconds"] > 0
    errors = [r["error"] for r in rows if r["error"] is not None]
    assert len(errors) == len(BAD)
    for (_, expected), error in zip(BAD, errors):
        assert error.startswith(expected.split(":")[0] + ":") and expected in error, (expected, error)
    too_long = next(r for r in rows if r["id"] == "too-long")
    assert too_long["citations"] == [] and too_long["answer"] == "ok." and "context window" in too_long["error"]


def test_parquet_in_and_out_equal_jsonl(small, model_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    inp, out, _ = small
    good = [json.loads(line) for line in inp.read_text().splitlines() if line.startswith('{"id": "r')]
    # Parquet needs one type per column: documents as {id, text} structs throughout (a string's id: its position).
    for r in good:
        r["documents"] = [d if isinstance(d, dict) else {"id": str(j), "text": d} for j, d in enumerate(r["documents"])]
    pq.write_table(pa.Table.from_pylist(good), tmp_path / "in.parquet", row_group_size=5)
    summary = run_batch(tmp_path / "in.parquet", tmp_path / "out", target=str(model_dir), shard_size=4,
                        output_format="parquet", **COMMON)
    assert (summary.ok, summary.failed) == (12, 0)
    rows = read_output(tmp_path / "out")
    expected = [r for r in read_output(out) if r["error"] is None]
    assert _strip(rows) == [{**r, "index": i} for i, r in enumerate(_strip(expected))]
    table = pq.read_table(tmp_path / "out")  # the folder reads as one dataset (files starting "_" are skipped)
    assert table.num_rows == 12 and table.schema.field("citations").type.value_type.num_fields == 8
    # Documents as plain strings work too.
    plain = [{**r, "documents": [d["text"] for d in r["documents"]]} for r in good[:3]]
    pq.write_table(pa.Table.from_pylist(plain), tmp_path / "plain.parquet")
    s2 = run_batch(tmp_path / "plain.parquet", tmp_path / "out2", target=str(model_dir), **COMMON)
    assert (s2.ok, s2.failed) == (3, 0)


def test_resume_recomputes_only_missing_shards(small, model_dir, tmp_path):
    inp, out, _ = small
    kw = dict(target=str(model_dir), shard_size=4, **COMMON)
    run_batch(inp, tmp_path / "out", **kw)
    (tmp_path / "out" / "part-000001.jsonl").unlink()
    stale = tmp_path / "out" / ".part-000003.jsonl.12345.tmp"  # what a killed run leaves
    stale.write_text('{"half": ')
    summary = run_batch(inp, tmp_path / "out", **kw)
    assert (summary.written, summary.skipped, summary.ok, summary.failed) == (4, 16, 12, 8)
    assert not stale.exists()
    assert _strip(read_output(tmp_path / "out")) == _strip(read_output(out))
    again = run_batch(inp, tmp_path / "out", **kw)  # a finished job: nothing to do
    assert (again.written, again.skipped, again.ok) == (0, 20, 12)


def test_other_arguments_are_refused_unless_overwrite(small, model_dir, tmp_path):
    inp, _, _ = small
    kw = dict(target=str(model_dir), shard_size=4, **COMMON)
    run_batch(inp, tmp_path / "out", **kw)
    with pytest.raises(BatchError, match=r"other arguments \(top_k: 5 -> 2\).*--overwrite"):
        run_batch(inp, tmp_path / "out", **{**kw, "top_k": 2})
    summary = run_batch(inp, tmp_path / "out", **{**kw, "top_k": 2}, overwrite=True)
    assert summary.written == 20
    assert max(len(r["citations"]) for r in read_output(tmp_path / "out")) <= 2
    # A changed input is another job too.
    with open(inp, "a") as f:
        f.write(json.dumps(_good(99)) + "\n")
    try:
        with pytest.raises(BatchError, match="input_fingerprint"):
            run_batch(inp, tmp_path / "out", **{**kw, "top_k": 2})
    finally:
        inp.write_text("".join(inp.read_text().splitlines(keepends=True)[:-1]))


def test_bad_arguments(small, model_dir, tmp_path, tiny):
    inp, _, _ = small
    kw = dict(target=str(model_dir), **COMMON)
    with pytest.raises(BatchError, match="does not exist"):
        run_batch(tmp_path / "missing.jsonl", tmp_path / "o1", **kw)
    (tmp_path / "in.csv").write_text("id,question\n")
    with pytest.raises(BatchError, match="unknown format '.csv'.*jsonl"):
        run_batch(tmp_path / "in.csv", tmp_path / "o2", **kw)
    (tmp_path / "afile").write_text("")
    with pytest.raises(BatchError, match="is a file"):
        run_batch(inp, tmp_path / "afile", **kw)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BatchError, match="did not write .notes.txt"):
        run_batch(inp, tmp_path / "mine", **kw)
    assert (tmp_path / "mine" / "notes.txt").exists()
    with pytest.raises(ConfigError, match="not a loaded model"):
        run_batch(inp, tmp_path / "o3", **{**kw, "target": tiny}, engine="ray")
    with pytest.raises(UnknownModelError, match="no-such-model"):
        run_batch(inp, tmp_path / "o3", **{**kw, "target": "no-such-model"}, engine="ray")
    with pytest.raises(ConfigError, match="unknown engine"):
        run_batch(inp, tmp_path / "o3", **kw, engine="spark")
    for bad_size in (0, "4", 2.0, True):  # wrong types were a raw TypeError, or silently accepted
        with pytest.raises(ConfigError, match="shard_size"):
            run_batch(inp, tmp_path / "o3", **kw, shard_size=bad_size)
    for bad in ({"cpus_per_actor": 0}, {"cpus_per_actor": "2"}, {"gpus_per_actor": -1}, {"gpus_per_actor": "1"},
                {"num_actors": 0}, {"num_actors": 1.5}, {"ray_init_kwargs": {"num_cpus": 0}},
                {"ray_init_kwargs": {"num_cpus": "2"}}):
        with pytest.raises(ConfigError, match="cpus_per_actor|num_actors|num_cpus"):
            run_batch(inp, tmp_path / "o3", **kw, engine="ray", **bad)
    with pytest.raises(ConfigError, match="num_actors must"):  # num_cpus=None is Ray's own "detect them"
        run_batch(inp, tmp_path / "o3", **kw, engine="ray", ray_init_kwargs={"num_cpus": None}, num_actors=0)
    for bad in ({"threads": 0}, {"threads": "2"}, {"top_k": 0}, {"top_k": "3"}, {"top_k": True}):
        with pytest.raises(ConfigError, match="threads|top_k"):
            run_batch(inp, tmp_path / "o3", **{**kw, **bad})
    # a proxy the job's one strategy never uses is refused before any model loads
    with pytest.raises(ConfigError, match="does not use the proxy"):
        run_batch(inp, tmp_path / "o3", **{**kw, "strategy": "auto"}, proxy="no-such-model")
    (tmp_path / "busy").mkdir()
    with _Lock(tmp_path / "busy"), pytest.raises(BatchError, match="another attribot-rag batch job"):
        run_batch(inp, tmp_path / "busy", **kw)


def test_loaded_model_and_plan(small, tiny, tmp_path):
    inp, out, _ = small
    assert [(s.start, s.stop) for s in plan_shards(inp, 8)] == [(0, 8), (8, 16), (16, 20)]
    common = {k: v for k, v in COMMON.items() if k != "dtype"}  # a model object is used as it is (fp32 here)
    summary = run_batch(inp, tmp_path / "out", target=tiny, shard_size=4, **common)  # a loaded model, local engine

    def same(rows):  # error messages name the model ("tiny" here, the folder there)
        return [{**r, "error": r["error"] and r["error"].split(":")[0]} for r in _strip(rows)]

    assert same(read_output(tmp_path / "out")) == same(read_output(out))
    assert json.loads((tmp_path / "out" / "_job.json").read_text())["target"] == "<loaded:tiny>"
    assert summary.ok == 12


def test_cli_batch(small, model_dir, tmp_path, capsys):
    inp, out, _ = small
    args = ["batch", str(inp), str(tmp_path / "out"), "--target", str(model_dir), "--dtype", "fp32",
            "--threads", "1", "--shard-size", "4", "--no-progress"]
    assert main(args) == 0
    assert "done: 12 ok, 8 failed, 20 records" in capsys.readouterr().out
    assert _strip(read_output(tmp_path / "out")) == _strip(read_output(out))
    assert main([*args[:-3], "--shard-size", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attribot-rag: error:") and "shard_size: 4 -> 5" in err and len(err.splitlines()) == 1


def test_a_broken_model_stops_the_job(model_dir, tmp_path, monkeypatch, tiny):
    from attribot_rag import Attributor
    from attribot_rag.batch import RecordAttributor

    worker = RecordAttributor(tiny, max_unexpected_in_a_row=3)
    real = Attributor.attribute

    def broken(self, *args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(Attributor, "attribute", broken)
    rows = [worker.row(i, _good(i)) for i in range(2)]  # odd failures become error rows
    assert [r["error"] for r in rows] == ["RuntimeError: device lost"] * 2
    assert worker.row(2, {"id": 1})["error"].startswith("InputError")  # a bad record resets the count
    with pytest.raises(BatchError, match="3 records in a row failed.*RuntimeError: device lost"):
        [worker.row(i, _good(i)) for i in range(3)]
    kw = dict(target=str(model_dir), shard_size=4, **COMMON)
    inp = _write_jsonl(tmp_path / "in.jsonl", 16, bad=False)
    with pytest.raises(BatchError, match="10 records in a row.*record 9"):  # the default: 10
        run_batch(inp, tmp_path / "out", **kw)
    # Records 0-7 failed fewer than 10 in a row when their shards were written; shard 2 (8-11) is not.
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("part-")) == [
        "part-000000.jsonl", "part-000001.jsonl"]
    monkeypatch.setattr(Attributor, "attribute", real)
    summary = run_batch(inp, tmp_path / "out", **kw)
    assert (summary.written, summary.skipped, summary.ok, summary.failed) == (8, 8, 8, 8)


# ------------------------------------------------------------------ killed jobs (subprocesses)
@pytest.fixture(scope="module")
def big(tmp_path_factory, model_dir):
    """120 good records + the bad ones, shards of 5, and an uninterrupted reference run."""
    d = tmp_path_factory.mktemp("big")
    inp = _write_jsonl(d / "in.jsonl", 120)
    run_batch(inp, d / "ref", target=str(model_dir), shard_size=5, **COMMON)
    return inp, read_output(d / "ref")


def _batch_args(inp: Path, out: Path, model_dir: Path, *extra: str) -> list[str]:
    return ["batch", str(inp), str(out), "--target", str(model_dir), "--dtype", "fp32", "--threads", "1",
            "--shard-size", "5", "--no-progress", *extra]


def _start_and_signal(args: list[str], out: Path, sig: int, group: bool = False) -> tuple[int, str]:
    """Run the CLI in a subprocess, send ``sig`` once a first shard is on disk; (exit code, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "attribot_rag.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while not (out.exists() and any(p.name.startswith("part-") for p in out.iterdir())):
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no shard was written in time"
            time.sleep(0.01)
        if group:  # the whole job (driver and everything it started), as a scheduler kills it
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err.decode()


def _check_complete(out: Path, reference: list[dict]) -> None:
    rows = read_output(out)
    assert [r["index"] for r in rows] == list(range(len(reference)))  # every record exactly once, in order
    assert _strip(rows) == _strip(reference)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("sig,code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_killed_job_resumes(big, model_dir, tmp_path, capsys, sig, code):
    inp, reference = big
    out = tmp_path / "out"
    rc, err = _start_and_signal(_batch_args(inp, out, model_dir), out, sig)
    assert rc == code, err[-2000:]
    if sig != signal.SIGKILL:  # a clean stop: a message, no temp files
        assert "interrupted" in err and "rerun the same command to resume" in err
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    written = {p.name for p in out.iterdir() if p.name.startswith("part-")}
    assert 1 <= len(written) < -(-len(reference) // 5), "the job was not stopped half-way"
    assert main(_batch_args(inp, out, model_dir)) == 0  # the same command again
    assert f"{len(written) * 5} already written" in capsys.readouterr().out
    _check_complete(out, reference)


# ------------------------------------------------------------------ Ray
def test_ray_equals_local(ray_cluster, small, model_dir, tmp_path):
    inp, out, local = small
    summary = run_batch(inp, tmp_path / "out", target=str(model_dir), shard_size=4, engine="ray", num_actors=2,
                        cpus_per_actor=1, **COMMON)
    assert (summary.engine, summary.ok, summary.failed, summary.written) == ("ray", 12, 8, 20)
    assert _strip(read_output(tmp_path / "out")) == _strip(read_output(out))
    assert ray_cluster.is_initialized()  # a Ray it did not start is left running


def test_ray_job_killed_and_resumed(ray_cluster, big, model_dir, tmp_path):
    """The whole ray job (driver + the local Ray it started) killed by SIGKILL, then the same job on Ray again."""
    inp, reference = big
    out = tmp_path / "out"
    args = _batch_args(inp, out, model_dir, "--engine", "ray", "--num-actors", "2", "--ray-cpus", "2")
    rc, err = _start_and_signal(args, out, signal.SIGKILL, group=True)
    assert rc == -signal.SIGKILL, err[-2000:]
    written = {p.name for p in out.iterdir() if p.name.startswith("part-")}
    assert 1 <= len(written) < -(-len(reference) // 5)
    summary = run_batch(inp, out, target=str(model_dir), shard_size=5, engine="ray", num_actors=2, **COMMON)
    assert summary.skipped == 5 * len(written) and summary.ok + summary.failed == len(reference)
    _check_complete(out, reference)


def test_parquet_folder_input_and_output_layouts(model_dir, tmp_path):
    """OUT inside a Parquet input folder would be read back as input: refused. Spark's _temporary
    parts and hidden files are not data (as pyarrow reads a dataset)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    logs = tmp_path / "logs"
    (logs / "_temporary").mkdir(parents=True)
    rows = [{**_good(i), "documents": [{"id": "a", "text": "Paris is in France."}]} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), logs / "x.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), logs / "_temporary" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), logs / ".hidden.parquet")
    assert plan_shards(logs, 10)[-1].stop == 3
    with pytest.raises(BatchError, match="inside the input folder"):
        run_batch(logs, logs / "attributed", target=str(model_dir), **COMMON)
    assert not (logs / "attributed" / "_job.json").exists()
    summary = run_batch(logs, tmp_path / "out", target=str(model_dir), **COMMON)
    assert (summary.ok, summary.failed) == (3, 0)
    assert [r["id"] for r in read_output(tmp_path / "out")] == ["r0", "r1", "r2"]


def test_bad_document_shapes_are_error_rows_and_parquet_gaps_are_absent(model_dir, tmp_path):
    """A string 'metadata' or a non-list 'sentences' is that record's InputError (not a crash that
    stops the job); a None 'sentences' (Parquet fills missing struct fields with None) is absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = [{**_good(i), "documents": [{"id": "a", "text": "Paris is in France.", "metadata": "wiki"}]}
           for i in range(11)]
    bad.append({**_good(11), "documents": [{"id": "a", "sentences": "Paris is in France."}]})
    inp = tmp_path / "bad.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in bad))
    summary = run_batch(inp, tmp_path / "out", target=str(model_dir), **COMMON)  # 12 in a row: not a stopped job
    errors = [r["error"] for r in read_output(tmp_path / "out")]
    assert (summary.ok, summary.failed) == (0, 12)
    assert all(e.startswith("InputError: source 0: 'metadata' is a str") for e in errors[:11])
    assert errors[11].startswith("InputError: source 0: 'sentences' must be a list of strings")
    mixed = [{**_good(0), "documents": [{"id": "a", "text": "Paris is in France."},
                                        {"id": "b", "sentences": ["Berlin is in Germany.", " It is big."]}]}]
    pq.write_table(pa.Table.from_pylist(mixed), tmp_path / "mixed.parquet")
    summary = run_batch(tmp_path / "mixed.parquet", tmp_path / "out2", target=str(model_dir), **COMMON)
    assert (summary.ok, summary.failed) == (1, 0)


def test_stale_temp_files_and_shard_order(model_dir, tmp_path):
    """A run killed while writing _summary.json leaves its temp file: the next run resumes anyway.
    Shard files past part-999999 read back in number order."""
    inp = _write_jsonl(tmp_path / "in.jsonl", 2, bad=False)
    out = tmp_path / "out"
    run_batch(inp, out, target=str(model_dir), **COMMON)
    (out / "._summary.json.4242.tmp").write_text("{")
    summary = run_batch(inp, out, target=str(model_dir), **COMMON)
    assert summary.written == 0 and not (out / "._summary.json.4242.tmp").exists()
    parts = tmp_path / "parts"
    parts.mkdir()
    for n in (999999, 1000000):
        (parts / f"part-{n}.jsonl").write_text(json.dumps({"index": n}) + "\n")
    assert [r["index"] for r in read_output(parts)] == [999999, 1000000]


def test_torch_dtype_is_recorded_by_name(model_dir, tmp_path):
    import torch

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(_good(0)) + "\n")
    common = {k: v for k, v in COMMON.items() if k != "dtype"}
    summary = run_batch(inp, tmp_path / "out", target=str(model_dir), dtype=torch.float32, **common)
    assert summary.ok == 1 and json.loads((tmp_path / "out" / "_job.json").read_text())["dtype"] == "float32"
