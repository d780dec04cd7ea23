"""The ``edgecompress`` command line: demo, compress, bench, info, formats, targets, schema,
serve, events."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .cli_options import non_negative_int, positive_int
from .errors import EdgeCompressError

log = logging.getLogger("edgecompress")
D = " [default: %(default)s]"


def _verify(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "no_verify", False) else None


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), epochs=args.epochs, image_size=args.image_size, seed=args.seed,
             threads=args.threads)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .runtime import load

    runner = load(args.artifact, threads=args.threads, verify=_verify(args))
    stats = runner.benchmark(warmup=args.warmup, runs=args.runs, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"artifact": str(args.artifact), "format": runner.format,
                          **stats.to_dict()}, indent=2))
    else:
        print(f"{args.artifact} [{runner.format}]")
        print(stats)
        if stats.system:
            print("system:", json.dumps(stats.system))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .runtime import load

    info = load(args.artifact, verify=_verify(args)).info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['path']}  format={info['format']}  size={info['size_bytes']:,} bytes  "
          f"sha256 {'verified' if info.get('verified') else 'NOT verified'}")
    for kind in ("inputs", "outputs"):
        for spec in info[kind]:
            print(f"  {kind[:-1]:6s} {spec['name']}: shape={spec['shape']} dtype={spec['dtype']}")
    for key, value in sorted(info["metadata"].items()):
        text = json.dumps(value, default=str)
        print(f"  {key}: {text if len(text) < 200 else text[:197] + '...'}")
    return 0


def _cmd_formats(args: argparse.Namespace) -> int:
    from .formats import format_table

    rows = format_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["format", "suffix", "extra", "fp16", "int8 static", "int8 dynamic", "available"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from .targets import TARGETS

    if args.json:
        print(json.dumps([t.to_dict() for t in TARGETS.values()], indent=2))
        return 0
    rows = [{"target": t.name, "formats": ",".join(t.formats), "threads": str(t.threads),
             "int8 engine": t.quant_backend, "device": t.description} for t in TARGETS.values()]
    cols = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    for r in rows:
        print("  ".join(r[c].ljust(w) for c, w in zip(cols, widths)).rstrip())
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from ._io import atomic_write_bytes
    from .recipe_schema import recipe_schema

    text = json.dumps(recipe_schema(), indent=2) + "\n"
    if args.out:
        print(atomic_write_bytes(Path(args.out), text.encode()))
    else:
        print(text, end="")
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from .compress import compress_from_args

    return compress_from_args(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve.cli import serve_from_args

    return serve_from_args(args)


def _cmd_events(args: argparse.Namespace) -> int:
    from .serve.cli import events_from_args

    return events_from_args(args)


def _add_serve_parsers(sub: argparse._SubParsersAction) -> None:
    from .serve.cli import add_events_arguments, add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="serve an artifact over HTTP (health, "
                                                     "predict, metrics, model swap)"))
    add_events_arguments(sub.add_parser("events", help="print the event log of a server"))


def _add_compress_parser(sub: argparse._SubParsersAction, command: str | None) -> None:
    if command != "compress":  # its arguments import torch: only for the compress command itself
        sub.add_parser("compress", help="compress a model (a recipe file or pass flags) and export it")
        return
    try:
        from .compress import add_compress_arguments
    except ImportError as exc:  # a device install without torch: serve, bench and info still work
        p = sub.add_parser("compress", help="(needs torch: pip install edgecompress)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(unavailable=f"compress needs the full library ({exc}); on a workstation "
                                   f"run: pip install edgecompress")
        return
    add_compress_arguments(sub.add_parser(
        "compress", help="compress a model (a recipe file or pass flags) and export it",
        usage="edgecompress compress --model MODEL [--recipe FILE | --prune X --int8 ...] "
              "[--target TARGET] [--export FORMATS] [--out DIR] [options]",
        description="Run passes on a model, export the result and write the measured report. "
                    "The passes come from --recipe, or from the pass flags (which build the "
                    "recipe; --save-recipe writes it). Every pass, export and measurement "
                    "option below is the Python API's option of the same name."))


def _add_demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="train a small CNN on bundled digits, compress, export, "
                                       "benchmark and print the measured report")
    demo.add_argument("--out", default="edgecompress-demo", help="output folder" + D)
    demo.add_argument("--epochs", type=non_negative_int, default=4,
                      help="training epochs before compressing" + D)
    demo.add_argument("--image-size", type=positive_int, default=32,
                      help="digits resized to this size" + D)
    demo.add_argument("--seed", type=non_negative_int, default=0,
                      help="seed of data split and training" + D)
    demo.add_argument("--threads", type=positive_int, default=None,
                      help="torch and runtime threads [default: torch's]")


def build_parser(command: str | None = "compress") -> argparse.ArgumentParser:
    """The parser; ``command`` (the one about to run) lets the others skip importing torch."""
    parser = argparse.ArgumentParser(prog="edgecompress", description=__doc__)
    from ._version import __version__

    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"edgecompress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_demo_parser(sub)

    bench = sub.add_parser("bench", help="measure an artifact's latency through its Runner")
    bench.add_argument("artifact", help="an exported file or folder (any format of "
                                        "'edgecompress formats')")
    bench.add_argument("--runs", type=positive_int, default=100, help="timed runs" + D)
    bench.add_argument("--warmup", type=non_negative_int, default=10, help="untimed runs first" + D)
    bench.add_argument("--threads", type=positive_int, default=None,
                       help="runtime threads [default: the runtime's]")
    bench.add_argument("--batch-size", type=positive_int, default=1, help="inputs per call" + D)
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument("--no-verify", action="store_true",
                       help="run a file without (or failing) its sha256 record")

    info = sub.add_parser("info", help="inputs, outputs, size and metadata of an artifact")
    info.add_argument("artifact", help="an exported file or folder")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--no-verify", action="store_true",
                      help="read a file without (or failing) its sha256 record")

    formats = sub.add_parser("formats", help="the export formats and whether they run here")
    formats.add_argument("--json", action="store_true", help="machine-readable output")

    targets = sub.add_parser("targets", help="the device profiles --target accepts")
    targets.add_argument("--json", action="store_true", help="machine-readable output")

    schema = sub.add_parser("schema", help="the JSON Schema of recipe files")
    schema.add_argument("--out", default=None, help="write it to this file instead of stdout")

    _add_compress_parser(sub, command)
    _add_serve_parsers(sub)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _cmd_demo, "bench": _cmd_bench, "info": _cmd_info, "formats": _cmd_formats,
    "compress": _cmd_compress, "serve": _cmd_serve, "events": _cmd_events,
    "targets": _cmd_targets, "schema": _cmd_schema,
}


# C++ runtimes log at start-up to stderr unless told otherwise: TensorFlow/LiteRT (absl, oneDNN,
# XLA) read TF_CPP_MIN_LOG_LEVEL, glog-based ones GLOG_minloglevel. A user's own setting wins.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2"}
# Python loggers of dependencies that report at INFO/WARNING what a user cannot act on
QUIET_LOGGERS = ("jax", "absl", "torch.utils._pytree", "onnxruntime", "litert_torch", "tensorflow")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after set-up)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(verbose: bool = False) -> None:
    """Show the ``edgecompress`` logger's messages (INFO, DEBUG with ``-v``) and quiet the
    start-up chatter of the runtimes underneath. The root logger is left as it is: the CLI
    owns only its own logger, so an application embedding :func:`main` keeps its set-up."""
    import os

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logger = logging.getLogger("edgecompress")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False  # printed once, by our handler
    if not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``edgecompress`` command line; returns the exit code (2: bad input)."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    args = build_parser(words[0] if words else None).parse_args(argv)
    configure_logging(args.verbose)
    if getattr(args, "unavailable", None):
        print(f"edgecompress {args.command}: error: {args.unavailable}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except EdgeCompressError as exc:
        print(f"edgecompress {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
