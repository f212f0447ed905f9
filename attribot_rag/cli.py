"""``attribot-rag`` command line: ``cite`` an answer, ``batch`` a log of answers, list / pull ``models``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys

from .batch import ENGINES, OUTPUT_FORMATS, run_batch
from .batch.engines import _main_thread
from .docs_io import EXAMPLE_DOCS, EXAMPLE_QUESTION, load_docs
from .errors import AttribotError, ConfigError
from .models import DEFAULT_MODEL, REGISTRY


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attribot-rag", description="Which retrieved sources did a RAG answer use? (leave-one-out attribution)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cite = sub.add_parser("cite", help="attribute an answer to documents and print ranked citations")
    cite.add_argument("question", nargs="?", default=None,
                      help="the question (default: the bundled example's question)")
    cite.add_argument("--docs", default=None,
                      help="documents: .jsonl ({'id','text',...} per line), .json, or a folder of .txt files "
                           "(default: the bundled example corpus)")
    cite.add_argument("--answer", default=None, help="the answer to attribute (default: the target generates one)")
    cite.add_argument("--target", default=DEFAULT_MODEL, help=f"target model (default {DEFAULT_MODEL})")
    cite.add_argument("--proxy", default=None, help="optional smaller proxy model")
    cite.add_argument("--strategy", default="auto",
                      help="auto, exact, serial, batched, hierarchical, documents, proxy, proxy-hierarchical, "
                           "proxy-prune; approximate: masked, hierarchical-pruned, masked-rescore")
    cite.add_argument("--top-k", type=int, default=5, help="citations to print (default 5)")
    cite.add_argument("--max-new-tokens", type=int, default=96, help="length cap when generating the answer")
    cite.add_argument("--overflow", default="error",
                      help="a prompt longer than the model's window: error (default), drop_last (drop the "
                           "last-retrieved documents until it fits) or drop_lowest_score (by their 'score' key)")
    cite.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: auto)")
    cite.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: auto)")
    cite.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    cite.add_argument("--html", default=None, metavar="FILE",
                      help="also write the visual citations (answer with markers, highlighted sources) to FILE")
    cite.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cite.add_argument("--no-context-support", action="store_true",
                      help="skip the context-support passes (faster; ranking only: no 'supported' verdict, "
                           "sources are used by the leave-one-out thresholds alone)")

    models = sub.add_parser("models", help="list or pull the embedded models")
    msub = models.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="list the embedded models")
    pull = msub.add_parser("pull", help="install and convert an embedded model now")
    pull.add_argument("name", choices=sorted(REGISTRY))
    add_batch_parser(sub)
    return parser


def _cite(args) -> int:
    from .attributor import OVERFLOW_POLICIES, Attributor, check_proxy_used
    from .render import render_terminal, save_html
    from .spans import check_text

    if args.top_k < 1:
        raise ConfigError("--top-k must be >= 1")
    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be >= 1")
    check_proxy_used(args.strategy, args.proxy)  # before any model loads
    docs_path = args.docs if args.docs is not None else EXAMPLE_DOCS  # "" (an unset variable) is an error
    question = args.question or (EXAMPLE_QUESTION if args.docs is None else None)
    if not question:
        raise AttribotError("give the question as the first argument: attribot-rag cite \"...\" --docs FILE")
    if args.overflow not in OVERFLOW_POLICIES:
        raise ConfigError(f"unknown --overflow {args.overflow!r}: use one of {', '.join(OVERFLOW_POLICIES)}")
    # bad text is refused here, before a model loads (an argument's non-UTF-8 bytes arrive as lone surrogates)
    check_text(question, "the question")
    if args.answer is not None:
        check_text(args.answer, "the --answer text")
    docs = load_docs(docs_path)
    attributor = Attributor(
        args.target, args.proxy, strategy=args.strategy, device=args.device, dtype=args.dtype,
        overflow=args.overflow, progress=not args.no_progress and not args.json,
    )
    result = attributor.attribute(question, docs, args.answer, max_new_tokens=args.max_new_tokens,
                                  context_support=not args.no_context_support)
    if args.html:
        try:
            path = save_html(result, args.html, top_k=args.top_k)
        except OSError as exc:
            raise AttribotError(f"cannot write the HTML view to {args.html}: {exc}") from exc
        print(f"attribot-rag: HTML view written to {path}", file=sys.stderr)
    if args.json:
        d = result.to_dict(top_k=args.top_k)
        out = {
            "question": d["question"],
            "answer": d["answer"],
            "strategy": d["strategy"],
            "citations": [
                {k: c[k] for k in ("rank", "source_id", "sentence", "start", "end", "score", "share",
                                   "answer_sentences")}
                for c in d["cited"]  # the decision rule's citations: none for an unsupported answer
            ],
            "sources": [{k: s[k] for k in ("id", "score", "share", "used")} for s in d["sources"]],
            "timing": d["timing"],
            # the decision layer's support verdicts (score: the context's lift, nats)
            "supported": d["supported"],
            "answer_sentences": [{k: a[k] for k in ("text", "start", "end", "supported", "score")}
                                 for a in d["answer_sentences"]],
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    render_terminal(result, top_k=args.top_k)
    return 0


def _models(args) -> int:
    from .models import cache_home, pull

    if args.action == "list":
        print(f"{'name':<20} {'MB':>5}  description   (cache: {cache_home()})")
        for m in REGISTRY.values():
            print(f"{m.name:<20} {m.size_mb:>5}  {m.description}")
        return 0
    print(pull(args.name, quiet=False))
    return 0


# ---------------------------------------------------------------------------------------- batch
def add_batch_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "batch", help="attribute a log of RAG answers (JSONL/Parquet) into a resumable folder of shards",
        description="Attribute every record {id, question, documents, answer} of IN into the folder OUT "
                    "(one file per shard; rerun the same command to resume an interrupted job).",
    )
    p.add_argument("input", metavar="IN", help="records: .jsonl, .parquet, or a folder of .parquet files")
    p.add_argument("output", metavar="OUT", help="output folder (created; resumed when it holds this job)")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this process, one model; ray: a Ray Data actor pool (default local)")
    p.add_argument("--target", default=DEFAULT_MODEL, help=f"target model (default {DEFAULT_MODEL})")
    p.add_argument("--proxy", default=None, help="optional smaller proxy model")
    p.add_argument("--strategy", default="auto", help="a strategy preset (default auto)")
    p.add_argument("--top-k", type=int, default=5, help="citations per row (default 5)")
    p.add_argument("--shard-size", type=int, default=100, help="records per output file (default 100)")
    p.add_argument("--format", dest="output_format", choices=OUTPUT_FORMATS, default="jsonl",
                   help="output shard format (default jsonl)")
    p.add_argument("--overflow", default="error", help="error (default), drop_last or drop_lowest_score")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto; each ray actor picks its own)")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (local process, or each ray actor)")
    p.add_argument("--address", default=None, help="ray cluster address (default $RAY_ADDRESS, else start Ray locally)")
    p.add_argument("--ray-cpus", type=int, default=None,
                   help="CPUs of the local Ray instance started when there is no cluster address (default: all)")
    p.add_argument("--num-actors", type=int, default=None,
                   help="ray actors, one model each (default: one per GPU, else CPUs / --cpus-per-actor)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs each ray actor requests (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help="GPUs each ray actor requests (default 1 when the cluster has GPUs, else 0)")
    p.add_argument("--overwrite", action="store_true", help="start over when OUT holds a job with other arguments")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so shards in flight are discarded cleanly."""


def run_batch_command(args: argparse.Namespace) -> int:
    """``attribot-rag batch``: run, print the summary; 130 / 143 on SIGINT / SIGTERM (rerun to resume)."""
    def on_term(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        summary = run_batch(
            args.input, args.output, target=args.target, proxy=args.proxy, strategy=args.strategy, top_k=args.top_k,
            shard_size=args.shard_size, output_format=args.output_format, overflow=args.overflow,
            device=args.device, dtype=args.dtype, engine=args.engine, threads=args.threads, address=args.address,
            num_actors=args.num_actors, cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
            ray_init_kwargs={"num_cpus": args.ray_cpus} if args.ray_cpus is not None else None,
            overwrite=args.overwrite, progress=not args.no_progress,
        )
    except (KeyboardInterrupt, _Terminated) as exc:
        code = 143 if isinstance(exc, _Terminated) else 130
        print(f"attribot-rag: interrupted; every finished shard is in {args.output}: rerun the same command to resume",
              file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(summary)
    return 0


_COMMANDS = {"cite": _cite, "models": _models, "batch": run_batch_command}


@contextlib.contextmanager
def _no_loading_bars(quiet: bool):
    """Hide transformers' "Loading weights" bars too when progress is off (stderr then holds only our lines)."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point. Errors print one clear line and exit non-zero (set ATTRIBOT_DEBUG=1 for tracebacks)."""
    args = _parser().parse_args(argv)
    try:
        with _no_loading_bars(getattr(args, "no_progress", False) or getattr(args, "json", False)):
            return _COMMANDS[args.command](args)
    except AttribotError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # one line, always
        print(f"attribot-rag: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attribot-rag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... --json | head` closed the pipe: not an error of ours
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # the interpreter flushes stdout at exit: not into the closed pipe
        return 0
    except Exception as exc:  # never a bare traceback for users
        if os.environ.get("ATTRIBOT_DEBUG"):
            raise
        print(f"attribot-rag: unexpected error: {type(exc).__name__}: {exc} (ATTRIBOT_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
