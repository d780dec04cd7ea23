"""``edgecompress compress``: model + data + recipe (+ target) → artifacts, report and plot."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._io import atomic_write_bytes
from .data import DataBundle
from .errors import ConfigError, DataError, EdgeCompressError
from .formats import get_format

if TYPE_CHECKING:
    from .pipeline import Pipeline

log = logging.getLogger("edgecompress")


def add_compress_arguments(p: argparse.ArgumentParser) -> None:
    """The ``compress`` flags: model and data, the recipe (a file, or pass flags that build it),
    target, exports and measurement. Pass, export and measurement options are derived from
    their declarations (see :mod:`edgecompress.compress_flags`)."""
    from .cli_options import add_option_flags
    from .compress_flags import add_export_flags, add_pass_flags
    from .pipeline import Measure

    _add_io_arguments(p.add_argument_group("model, data and output"))
    _add_recipe_arguments(p.add_argument_group("recipe", "a recipe file, or the pass flags "
                                                         "below, which build it"))
    p.set_defaults(_pass_flags=add_pass_flags(p), _export_flags=add_export_flags(p))
    group = p.add_argument_group("measurement of each stage (Measure)")
    p.set_defaults(_measure_flags=add_option_flags(group, Measure, "measure", skip=("threads",)))


def _add_io_arguments(io: Any) -> None:
    from .cli_options import non_negative_int, positive_int

    io.add_argument("--model", required=True,
                    help="'package.module:function' returning the model, a saved .ecm file, an "
                         ".onnx file, or a Keras .keras/.h5 file or TensorFlow SavedModel folder "
                         "(converted to torch; parity vs the original goes in the report)")
    io.add_argument("--weights", help="state dict to load into the model (torch.save file; "
                                      "loaded with weights_only=True)")
    io.add_argument("--data", default="digits",
                    help="'digits' (bundled), an IDX folder (MNIST-style) or an image "
                         "folder/.tar [default: digits]")
    io.add_argument("--image-size", type=positive_int, default=None,
                    help="resize inputs to this size [default: 32 for digits, else as stored]")
    io.add_argument("--channels", type=int, choices=(1, 3), default=None,
                    help="force 1 or 3 input channels")
    io.add_argument("--batch-size", type=positive_int, default=64, help="[default: 64]")
    io.add_argument("--out", default="edgecompress-out", help="output folder "
                    "[default: edgecompress-out]")
    io.add_argument("--seed", type=non_negative_int, default=0, help="[default: 0]")
    io.add_argument("--overwrite", action="store_true",
                    help="replace edgecompress artifacts already in --out (never other files)")
    io.add_argument("--select", action="store_true",
                    help="also export every format/precision the target can run, time each on "
                         "this machine and report the fastest verified one (select.md)")
    io.add_argument("--threads", type=positive_int, default=None,
                    help="torch and runtime threads [default: the target's, else torch's]")


def _add_recipe_arguments(rec: Any) -> None:
    from .formats import FORMATS
    from .targets import TARGETS

    rec.add_argument("--recipe", default=None, help="recipe file (.yaml or .json); see "
                     "'edgecompress schema' for its JSON Schema")
    rec.add_argument("--save-recipe", default=None, metavar="FILE",
                     help="write the recipe (built from the flags) to FILE (.yaml or .json)")
    rec.add_argument("--target", default=None, metavar="TARGET",
                     help="device profile: " + ", ".join(TARGETS) + " (see 'edgecompress "
                          "targets')")
    rec.add_argument("--export", default=None, metavar="FORMATS",
                     help="comma-separated formats: " + ", ".join(FORMATS) + " [default: the "
                          "target's two preferred formats, else onnx]")


def foreign_kind(spec: str) -> str | None:
    """"onnx" or "keras" when ``--model`` names a model not written in PyTorch, else None."""
    from .convert.keras_in import is_keras_source

    if spec.lower().endswith(".onnx"):
        return "onnx"
    return "keras" if is_keras_source(spec) else None


def input_layout(spec: str) -> str:
    """The layout ``--model``'s data must have: NHWC for Keras image models and for ONNX files
    whose 4-d input ends in 1 or 3 channels; NCHW otherwise."""
    kind = foreign_kind(spec)
    if kind == "keras":
        return "NHWC"
    if kind == "onnx":
        from .convert.onnx_graph import load_proto
        from .convert.onnx_in import input_shapes

        dims = input_shapes(load_proto(spec))[0]
        if len(dims) == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3):
            return "NHWC"
    return "NCHW"


def load_model(spec: str, weights: str | None,
               samples: torch.Tensor | None = None) -> tuple[nn.Module, str | None]:
    """A model from ``module:function``, an .ecm file, an ONNX file or a Keras / TensorFlow
    model (converted, parity measured on ``samples``), with optional state-dict weights."""
    kind = foreign_kind(spec)
    if kind is not None:
        if weights:
            raise ConfigError(f"--weights applies to torch models; {spec} carries its own")
        from .convert import from_keras, from_onnx

        return (from_onnx if kind == "onnx" else from_keras)(spec, samples), None
    if spec.endswith(".ecm"):
        from .deployable import DeployableModel

        dm = DeployableModel.load(spec)
        model, builder = dm.model, dm.builder
    else:
        from .registry import load_object

        if ":" not in spec:
            raise ConfigError(f"--model must be 'package.module:function' or a .ecm file, got "
                              f"'{spec}'")
        try:
            fn = load_object(spec)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"--model {spec}: cannot import it ({exc})") from exc
        model, builder = fn(), spec
        if not isinstance(model, nn.Module):
            raise ConfigError(f"--model {spec} returned {type(model).__name__}, not a torch.nn.Module")
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(f"--weights {weights} do not fit the model: {str(exc)[:400]}") from exc
    return model.eval(), builder


def load_data(spec: str, image_size: int | None, channels: int | None, batch_size: int,
              seed: int, layout: str = "NCHW") -> DataBundle:
    from . import data as ec_data

    if spec == "digits":
        return ec_data.digits(image_size=image_size or 32, batch_size=batch_size, seed=seed,
                              channels=channels or 1, layout=layout)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"--data {spec}: no such file or folder (use 'digits', an IDX folder or "
                        f"an image folder/.tar)")
    if path.is_dir() and any(f.name.startswith(("train-images", "t10k-images")) for f in path.iterdir()):
        return ec_data.idx(path, image_size=image_size, batch_size=batch_size, seed=seed,
                           channels=channels, layout=layout)
    return ec_data.image_folder(path, image_size=image_size, batch_size=batch_size, seed=seed,
                                layout=layout)


@dataclass
class CompressResult:
    """What :func:`compress` made: the DeployableModel, the artifacts, the failed exports
    (format → reason) and the other files written (report, recipe, plot)."""

    dm: Any
    artifacts: list[Any] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def compress(model: nn.Module, data: DataBundle, recipe: "str | Path | dict[str, Any] | Pipeline",
             out: Path, formats: list[str] | None = None, target: str | None = None, seed: int = 0,
             builder: str | None = None, threads: int | None = None,
             benchmark_runs: int = 50, overwrite: bool = False, select: bool = False,
             export_options: dict[str, dict[str, Any]] | None = None) -> CompressResult:
    """Run ``recipe`` (a recipe file or dict, or a Pipeline) on ``model``, export to
    ``formats``, write report.json/md, recipe.yaml and plot.png into ``out``.

    ``export_options`` maps a format to options for its exporter; they override the target
    profile's defaults and ``threads``/``benchmark_runs``. Artifacts already in ``out`` are
    replaced only with ``overwrite`` (checked before the pipeline runs, so a refusal costs
    nothing)."""
    from .pipeline import Pipeline
    from .targets import get_target

    pipe = recipe if isinstance(recipe, Pipeline) else Pipeline.from_recipe(recipe)
    pipe.seed = seed
    tgt = get_target(target) if target else None
    formats = formats or (list(tgt.formats[:2]) if tgt else ["onnx"])
    _check_destinations(out, formats, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    dm = pipe.run(model, data, target=tgt, builder=builder)
    result = CompressResult(dm)
    for fmt in formats:
        options = _export_options(dm, tgt, fmt, threads, benchmark_runs, overwrite)
        options.update((export_options or {}).get(fmt, {}))
        try:
            result.artifacts.append(dm.export(fmt, out / _artifact_name(get_format(fmt)), **options))
        except EdgeCompressError as exc:
            result.failures[fmt] = str(exc)
            log.error("export to %s failed: %s", fmt, exc)
    if select:
        result.files += _select(dm, tgt, out, threads, overwrite)
    if not any(a.format == "torch" for a in result.artifacts):
        dm.save(out / "model.ecm", builder=builder, overwrite=overwrite)
    dm.report.info["export_failures"] = result.failures
    result.files += [atomic_write_bytes(out / "report.json", dm.report.to_json().encode()),
                     atomic_write_bytes(out / "report.md", _markdown(dm, tgt).encode()),
                     pipe.save_recipe(out / "recipe.yaml")]
    try:
        from .plot import plot_report

        result.files.append(plot_report(dm.report, out / "plot.png",
                                        title=f"{type(model).__name__} on {data.name}"))
    except ImportError as exc:
        log.warning("no plot: %s", exc)
    return result


def _check_destinations(out: Path, formats: list[str], overwrite: bool) -> None:
    """Unknown formats and taken destinations fail before any work."""
    from .metadata import check_destination

    for fmt in formats:
        check_destination(out / _artifact_name(get_format(fmt)), fmt, overwrite)
    if "torch" not in formats:  # else the torch export itself writes model.ecm
        check_destination(out / "model.ecm", "torch", overwrite)
    _check_report_files(out, overwrite)


def _export_options(dm: Any, tgt: Any, fmt: str, threads: int | None, benchmark_runs: int,
                    overwrite: bool) -> dict[str, Any]:
    """The target profile's options for ``fmt``, then the run's threads, runs and overwrite."""
    scheme = dm.quant_recipe.scheme if dm.quant_recipe else None
    options: dict[str, Any] = dict(tgt.export_options(fmt, scheme)) if tgt else {}
    options.update(threads=threads or (tgt.threads if tgt else None),
                   benchmark_runs=benchmark_runs, overwrite=overwrite)
    return options


REPORT_FILES = ("report.json", "report.md", "recipe.yaml", "plot.png", "select.md", "select.json")


def _check_report_files(out: Path, overwrite: bool) -> None:
    """The report files compress writes replace files of the same names only with ``overwrite``
    (checked before any work: a user's own report.md in --out must survive a run)."""
    taken = [name for name in REPORT_FILES if (out / name).exists()]
    if taken and not overwrite:
        raise ConfigError(f"{out} already holds {', '.join(taken)}, which compress writes; pass "
                          f"--overwrite (overwrite=True) to replace them, or choose another --out")


def _artifact_name(spec: Any) -> str:
    return f"model_{spec.name}" if spec.directory else f"model{spec.suffixes[0]}"


def _select(dm: Any, tgt: Any, out: Path, threads: int | None, overwrite: bool) -> list[Path]:
    """Run :func:`edgecompress.select.select`; write select.md/json; note the winner in the report.

    ``overwrite`` reaches the candidates' exports: a rerun with ``--overwrite`` replaces the
    previous candidates instead of recording every one of them as refused."""
    import json

    from .select import select

    chosen = select(dm, target=tgt, out_dir=out / "select", threads=threads, overwrite=overwrite)
    dm.report.info["fastest_artifact"] = chosen.best.name if chosen.best else None
    dm.report.info["select_notes"] = chosen.notes
    return [atomic_write_bytes(out / "select.md", chosen.to_markdown().encode()),
            atomic_write_bytes(out / "select.json", json.dumps(chosen.to_dict(), indent=1).encode())]


def _markdown(dm: Any, tgt: Any) -> str:
    head = ["# edgecompress report", ""]
    if tgt is not None:
        head += [f"Target: **{tgt.name}** — {tgt.description}", ""]
        chosen = dm.report.info.get("from_target") or {}
        if chosen:
            head += ["Choices taken from the target profile:", ""]
            head += [f"- `{k}` = `{v}`" for k, v in chosen.items()] + [""]
    return "\n".join(head) + "\n" + dm.report.to_markdown(level=2)


def summary(result: CompressResult, out: Path, seconds: float) -> str:
    lines = [str(result.dm.report), ""]
    for art in result.artifacts:
        lines.append(f"  ✓ {art}")
    for fmt, err in result.failures.items():
        lines.append(f"  ✗ {fmt}: {err}")
    lines.append(f"written to {out}/ in {seconds:.0f} s: " + ", ".join(
        p.name for p in [*(a.path for a in result.artifacts), *result.files]))
    return "\n".join(lines)


def compress_from_args(args: argparse.Namespace) -> int:
    """``edgecompress compress``: build the pipeline (recipe file or pass flags), run, export."""
    from .cli_options import given
    from .compress_flags import export_options, formats_given_options, passes_from_args
    from .formats import get_format
    from .pipeline import Measure, Pipeline

    t0 = time.perf_counter()
    from .targets import get_target

    formats = [f.strip() for f in args.export.split(",") if f.strip()] if args.export else \
        (list(get_target(args.target).formats[:2]) if args.target else ["onnx"])
    for fmt in formats:
        get_format(fmt)  # unknown formats fail before any work
    formats_given_options(args, args._export_flags, formats)
    passes = passes_from_args(args, args._pass_flags, load_teacher=load_model)
    if args.recipe and passes:
        raise ConfigError("give either --recipe FILE or pass flags (--prune, --int8, ...), not "
                          "both; --save-recipe writes the flags' recipe to a file")
    if not args.recipe and not passes:
        raise ConfigError("nothing to do: give --recipe FILE or pass flags, e.g. --prune 0.3 "
                          "--int8 (see 'edgecompress compress --help')")
    measure = Measure(**given(args, args._measure_flags), threads=args.threads)
    pipe = Pipeline.from_recipe(args.recipe) if args.recipe else Pipeline(passes)
    pipe.measure, pipe.seed = measure, args.seed
    pipe.check()
    if args.save_recipe:
        _warn_python_only(pipe)
        log.info("recipe written to %s", pipe.save_recipe(args.save_recipe))
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(args.data, args.image_size, args.channels, args.batch_size, args.seed,
                     input_layout(args.model))
    samples = data.samples("val", 16) if foreign_kind(args.model) else None
    model, builder = load_model(args.model, args.weights, samples)
    out = Path(args.out)
    options = {fmt: export_options(args, args._export_flags, fmt) for fmt in formats}
    result = compress(model, data, pipe, out, formats, args.target, args.seed, builder,
                      args.threads, overwrite=args.overwrite, select=args.select,
                      export_options=options)
    print(summary(result, out, time.perf_counter() - t0))
    return 1 if result.failures else 0


def _warn_python_only(pipe: Any) -> None:
    """A teacher model given with --distill-from is no recipe value: say the file lacks it."""
    if any(getattr(p, "teacher", None) is not None for p in pipe.passes):
        log.warning("the recipe file cannot hold the --distill-from teacher (a model object); "
                    "give --distill-from again when running it")
