"""The ``edgecompress`` command line: demo, compress, bench, info, formats, serve, events."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import EdgeCompressError

log = logging.getLogger("edgecompress")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, runs, threads)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (warmup runs, epochs)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


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
        sub.add_parser("compress", help="run a recipe on a model and export")
        return
    try:
        from .compress import add_compress_arguments
    except ImportError as exc:  # a device install without torch: serve, bench and info still work
        p = sub.add_parser("compress", help="(needs torch: pip install edgecompress)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(unavailable=f"compress needs the full library ({exc}); on a workstation "
                                   f"run: pip install edgecompress")
        return
    add_compress_arguments(sub.add_parser("compress", help="run a recipe on a model and export"))


def build_parser(command: str | None = "compress") -> argparse.ArgumentParser:
    """The parser; ``command`` (the one about to run) lets the others skip importing torch."""
    parser = argparse.ArgumentParser(prog="edgecompress", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small CNN on bundled digits, compress, export, "
                                       "benchmark and print the measured report")
    demo.add_argument("--out", default="edgecompress-demo", help="output folder")
    demo.add_argument("--epochs", type=non_negative_int, default=4)
    demo.add_argument("--image-size", type=positive_int, default=32)
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.add_argument("--threads", type=positive_int, default=None)

    bench = sub.add_parser("bench", help="measure an artifact's latency through its Runner")
    bench.add_argument("artifact")
    bench.add_argument("--runs", type=positive_int, default=100)
    bench.add_argument("--warmup", type=non_negative_int, default=10)
    bench.add_argument("--threads", type=positive_int, default=None)
    bench.add_argument("--batch-size", type=positive_int, default=1)
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--no-verify", action="store_true",
                       help="run a file without (or failing) its sha256 record")

    info = sub.add_parser("info", help="inputs, outputs, size and metadata of an artifact")
    info.add_argument("artifact")
    info.add_argument("--json", action="store_true")
    info.add_argument("--no-verify", action="store_true",
                      help="read a file without (or failing) its sha256 record")

    formats = sub.add_parser("formats", help="the export formats and whether they run here")
    formats.add_argument("--json", action="store_true")

    _add_compress_parser(sub, command)
    _add_serve_parsers(sub)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _cmd_demo, "bench": _cmd_bench, "info": _cmd_info, "formats": _cmd_formats,
    "compress": _cmd_compress, "serve": _cmd_serve, "events": _cmd_events,
}


def main(argv: Sequence[str] | None = None) -> int:
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    args = build_parser(words[0] if words else None).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
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
