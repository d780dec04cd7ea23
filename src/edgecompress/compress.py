"""``edgecompress compress``: model + data + recipe (+ target) → artifacts, report and plot."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_write_bytes
from .data import DataBundle
from .errors import ConfigError, DataError, EdgeCompressError

log = logging.getLogger("edgecompress")


def add_compress_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="'package.module:function' returning the model, or a saved .ecm file")
    p.add_argument("--weights", help="state dict to load into the model (torch.save file; "
                                     "loaded with weights_only=True)")
    p.add_argument("--data", default="digits",
                   help="'digits' (bundled), an IDX folder (MNIST-style) or an image folder/.tar")
    p.add_argument("--image-size", type=int, default=None, help="resize inputs to this size")
    p.add_argument("--channels", type=int, default=None, help="force 1 or 3 input channels")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--recipe", required=True, help="recipe file (.yaml or .json)")
    p.add_argument("--target", default=None, help="device profile (see ec.targets), e.g. rpi5")
    p.add_argument("--export", default=None,
                   help="comma-separated formats (default: the target's preferred, else onnx)")
    p.add_argument("--out", default="edgecompress-out", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--benchmark-runs", type=int, default=50)


def load_model(spec: str, weights: str | None) -> tuple[nn.Module, str | None]:
    """A model from ``module:function`` or an .ecm file, with optional state-dict weights."""
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
              seed: int) -> DataBundle:
    from . import data as ec_data

    if spec == "digits":
        return ec_data.digits(image_size=image_size or 32, batch_size=batch_size, seed=seed,
                              channels=channels or 1)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"--data {spec}: no such file or folder (use 'digits', an IDX folder or "
                        f"an image folder/.tar)")
    if path.is_dir() and any(f.name.startswith(("train-images", "t10k-images")) for f in path.iterdir()):
        return ec_data.idx(path, image_size=image_size, batch_size=batch_size, seed=seed,
                           channels=channels)
    return ec_data.image_folder(path, image_size=image_size, batch_size=batch_size, seed=seed)


@dataclass
class CompressResult:
    dm: Any
    artifacts: list[Any] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def compress(model: nn.Module, data: DataBundle, recipe: str | Path | dict[str, Any], out: Path,
             formats: list[str] | None = None, target: str | None = None, seed: int = 0,
             builder: str | None = None, threads: int | None = None,
             benchmark_runs: int = 50) -> CompressResult:
    """Run ``recipe`` on ``model``, export to ``formats``, write report.json/md and plot.png."""
    from .formats import get_format
    from .pipeline import Pipeline
    from .targets import get_target

    pipe = Pipeline.from_recipe(recipe)
    pipe.seed = seed
    tgt = get_target(target) if target else None
    formats = formats or (list(tgt.formats[:2]) if tgt else ["onnx"])
    for fmt in formats:
        get_format(fmt)  # unknown formats fail before any work
    out.mkdir(parents=True, exist_ok=True)
    dm = pipe.run(model, data, target=tgt, builder=builder)
    result = CompressResult(dm)
    for fmt in formats:
        spec = get_format(fmt)
        scheme = dm.quant_recipe.scheme if dm.quant_recipe else None
        options: dict[str, Any] = dict(tgt.export_options(fmt, scheme)) if tgt else {}
        options.update(threads=threads or (tgt.threads if tgt else None),
                       benchmark_runs=benchmark_runs)
        name = "model_ncnn" if spec.directory else f"model{spec.suffixes[0]}"
        try:
            result.artifacts.append(dm.export(fmt, out / name, **options))
        except EdgeCompressError as exc:
            result.failures[fmt] = str(exc)
            log.error("export to %s failed: %s", fmt, exc)
    dm.save(out / "model.ecm", builder=builder)
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


def _markdown(dm: Any, tgt: Any) -> str:
    head = ["# edgecompress report", ""]
    if tgt is not None:
        head += [f"Target: **{tgt.name}** — {tgt.description}", ""]
        chosen = dm.report.info.get("from_target") or {}
        if chosen:
            head += ["Choices taken from the target profile:", ""]
            head += [f"- `{k}` = `{v}`" for k, v in chosen.items()] + [""]
    return "\n".join(head) + dm.report.to_markdown()


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
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    formats = [f.strip() for f in args.export.split(",") if f.strip()] if args.export else None
    model, builder = load_model(args.model, args.weights)
    data = load_data(args.data, args.image_size, args.channels, args.batch_size, args.seed)
    out = Path(args.out)
    result = compress(model, data, args.recipe, out, formats, args.target, args.seed, builder,
                      args.threads, args.benchmark_runs)
    print(summary(result, out, time.perf_counter() - t0))
    return 1 if result.failures else 0
