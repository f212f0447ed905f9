"""The engines that turn pending shards into rows: ``local`` (this process, the model loaded once)
and ``ray`` (Ray Data ``map_batches`` over shards with an actor pool, one model per actor, a GPU per
actor when the cluster has GPUs). Both give the same rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import BatchError, ConfigError
from .io import Shard, _dumps, read_shard
from .records import RecordAttributor

ENGINES = ("local", "ray")


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block (no change when ``None``)."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_local(pending: list[Shard], input_path: Path, worker: RecordAttributor,
               on_shard: Callable[[Shard, list[dict]], None], on_record: Callable[[dict], None]) -> None:
    for shard in pending:
        rows = []
        for row in worker.rows(read_shard(input_path, shard)):
            rows.append(row)
            on_record(row)
        on_shard(shard, rows)


class _RayShardWorker:
    """A Ray Data actor: loads the model once, then reads, attributes and returns whole shards."""

    def __init__(self, input_path: str, model_kw: dict, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.input_path = input_path
        self.worker = RecordAttributor(**model_kw)

    def __call__(self, batch: dict) -> dict:
        shards, texts = [], []
        for i, start, stop, offset in zip(batch["index"], batch["start"], batch["stop"], batch["offset"]):
            shard = Shard(int(i), int(start), int(stop), int(offset))
            rows = self.worker.rows(read_shard(self.input_path, shard))
            shards.append(shard.index)
            texts.append("".join(_dumps(r) + "\n" for r in rows))
        return {"index": shards, "rows": texts}


def _run_ray(pending: list[Shard], input_path: Path, model_kw: dict, on_shard: Callable[[Shard, list[dict]], None],
             address: str | None, num_actors: int | None, cpus_per_actor: float, gpus_per_actor: float | None,
             threads: int | None, ray_init_kwargs: dict | None) -> int:
    """Shards through Ray Data; returns the number of actors used."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError("the ray engine needs Ray Data: pip install 'attribot-rag[ray]'") from exc
    started_here = not ray.is_initialized()
    if started_here:  # a cluster at `address` (or $RAY_ADDRESS); otherwise a local instance on this machine
        kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
              **(ray_init_kwargs or {})}
        term_handler = signal.getsignal(signal.SIGTERM)
        ray.init(address=address, **kw)
        if callable(term_handler) and _main_thread():  # keep the caller's SIGTERM handler (the CLI's clean exit)
            signal.signal(signal.SIGTERM, term_handler)
    quiet = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}  # tqdm shows progress
    levels = {name: logging.getLogger(name).level for name in quiet}
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k, None) for k in ("enable_progress_bars", "print_on_execution_start")}
    try:
        ctx.enable_progress_bars = False  # the driver's tqdm bar counts records
        ctx.print_on_execution_start = False
        resources = ray.cluster_resources()
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        if num_actors is None:
            num_actors = (int(resources.get("GPU", 0) // gpus_per_actor) if gpus_per_actor
                          else int(resources.get("CPU", 1) // cpus_per_actor))
        num_actors = max(1, min(num_actors, len(pending)))
        if threads is None:
            threads = max(1, int(cpus_per_actor))
        items = [dataclasses.asdict(s) for s in pending]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            _RayShardWorker,
            fn_constructor_kwargs={"input_path": str(input_path), "model_kw": model_kw, "threads": threads},
            batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
        )
        by_index = {s.index: s for s in pending}
        try:
            for out in ds.iter_rows():
                # split on "\n" only: splitlines() also breaks at U+2028/U+0085 inside JSON strings
                rows = [json.loads(line) for line in out["rows"].split("\n") if line]
                on_shard(by_index[int(out["index"])], rows)
        except ray.exceptions.RayError as exc:  # e.g. an actor could not load the model
            raise BatchError(f"a Ray worker failed: {_ray_reason(exc)}; finished shards are kept: fix the cause and "
                             "rerun the same command to resume") from exc
        return num_actors
    finally:  # leave a Ray session the caller started as it was
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for k, v in saved.items():
            setattr(ctx, k, v)
        if started_here:
            ray.shutdown()


def _ray_reason(exc: BaseException) -> str:
    """The attribot-rag error inside a Ray error's text (actor tracebacks come back as text), else its first line."""
    text = str(exc)
    found = re.findall(r"attribot_rag\.errors\.(\w+): (.+)", text)
    if found:
        return f"{found[-1][0]}: {found[-1][1].strip()}"
    return f"{type(exc).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
