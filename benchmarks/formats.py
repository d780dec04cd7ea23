"""Every export format on this machine × precision: size, latency, FPS and parity per model.

Like Ultralytics' ``benchmark()``: for the demo model (a SmallCNN trained briefly on digits) and
torchvision resnet18 / mobilenet_v2 / mobilenet_v3_small / efficientnet_b0 at 224×224 (seeded
random weights with BatchNorm statistics recomputed on real images: speed and parity do not
need trained weights), export to each format of ``edgecompress.formats.FORMATS`` whose
modules import here, in fp32, fp16 (where the format holds it) and INT8 (static PTQ via
``ec.passes.QuantizePTQ`` where the format holds it). Each artifact verifies itself through
its runner on real images (parity vs the torch model; INT8 vs the simulated INT8 model);
formats or exporters missing here are listed with the error text.

    .venv/bin/python benchmarks/formats.py                          # digits as 3×224×224 images
    .venv/bin/python benchmarks/formats.py --cifar ../shared/data/cifar10-jpeg-test/test.tar
    .venv/bin/python benchmarks/formats.py --models demo resnet18 --formats onnx ncnn
    .venv/bin/python benchmarks/formats.py --models resnet20_cifar --cifar CIFAR_TAR \
        --resnet20 ../shared/data/resnet-cifar10-pretrained/resnet20-12fca82f.th

``resnet20_cifar`` is the one model here with trained weights: the pretrained CIFAR ResNet-20
on the CIFAR-10 JPEGs at 32×32 (calibrated on one half, checked on the other), so its INT8 rows
measure top-1 agreement on real data with real decision margins.

Latency is batch 1, ``--threads`` threads (default 1: on a shared 2-core machine two threads
spin against each other), p50 of ``--runs`` calls; the load average is printed and saved with
the results — rerun when the machine is quiet before trusting small differences.
Writes benchmarks/results/formats.json and formats.md (``--tag`` adds a suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

import edgecompress as ec
from edgecompress._extras import available
from edgecompress.formats import FORMATS
from edgecompress.models import small_cnn
from edgecompress.registry import load_object
from edgecompress.training import TrainConfig, cross_entropy_loss, train

TORCHVISION = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0")
FP16_OPTION = {"ncnn": {"fp16": True}, "tflite": {"fp16": True}, "tensorrt": {"fp16": True}}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["demo", *TORCHVISION],
                    choices=["demo", *TORCHVISION, "resnet20_cifar"])
    ap.add_argument("--resnet20", default=None, help="pretrained CIFAR ResNet-20 weights "
                    "(needed by --models resnet20_cifar, with --cifar)")
    ap.add_argument("--formats", nargs="+", default=None,
                    help="formats to try (default: every row of the format table)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"],
                    choices=["fp32", "fp16", "int8"])
    ap.add_argument("--cifar", default=None, help="CIFAR-10 JPEG tar/folder for the 224×224 "
                    "models' parity and INT8 calibration (default: digits upscaled to 3×224×224)")
    ap.add_argument("--images", type=int, default=192, help="real images for the 224 models "
                    "(half calibrate INT8, half check parity)")
    ap.add_argument("--no-probe", dest="probe", action="store_false",
                    help="keep torchvision's random 1000-class head (no linear probe)")
    ap.add_argument("--parity-samples", type=int, default=64)
    ap.add_argument("--calib-samples", type=int, default=64, help="INT8 calibration samples")
    ap.add_argument("--ptq-method", default="percentile", choices=["minmax", "percentile", "entropy"],
                    help="QuantizePTQ's range method for the simulated INT8 model")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per artifact")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--demo-epochs", type=int, default=4)
    ap.add_argument("--tag", default="", help="suffix of the result files (formats<tag>.json)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return ap.parse_args()


# -- models and data ---------------------------------------------------------------------------
def demo_model(data: ec.DataBundle, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = small_cnn(width=16)
    train(model, data.train, cross_entropy_loss, TrainConfig(epochs=epochs, lr=3e-3, seed=0),
          val_loader=data.val, desc="demo SmallCNN")
    return model.eval()


def torchvision_model(name: str, data: ec.DataBundle, batches: int = 4) -> torch.nn.Module:
    """A seeded random-weight torchvision model with BatchNorm statistics set on ``data``.

    With torchvision's random init and BatchNorm's default statistics, mobilenet_v2's logits
    are ~1e-11 and every image gets the same class, so parity would test nothing. Recomputing
    the BatchNorm running statistics on a few real batches (no training, no download) gives
    logits of a normal scale that differ between images.
    """
    import torchvision

    from edgecompress.data.bundle import iter_batches

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)  # never downloads
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(iter_batches(data.calib)):
            if i >= batches:
                break
            model(x)
    return model.eval()


def cifar_resnet20(args: argparse.Namespace) -> tuple[torch.nn.Module, ec.DataBundle]:
    """The pretrained CIFAR ResNet-20 and the CIFAR-10 JPEGs at 32×32 (calib / val halves)."""
    if not (args.resnet20 and args.cifar):
        sys.exit("--models resnet20_cifar needs --resnet20 WEIGHTS and --cifar CIFAR_TAR")
    sys.path.insert(0, str(Path(__file__).parent))
    from cifar_resnet import cifar_bundle, load_resnet, prunable

    data = cifar_bundle(args.cifar, batch_size=64, calib_size=max(256, args.calib_samples),
                        seed=0, limit=2 * args.images)
    # option-A shortcuts (strided slice + zero pad) as the equal 1×1 convs: ncnn has no
    # layer for a strided slice
    return prunable(load_resnet(args.resnet20)).eval(), data


def probe_head(model: torch.nn.Module, data: ec.DataBundle, steps: int = 300) -> float:
    """Replace the last Linear by a ``data.num_classes`` head trained on the frozen features of
    ``data.train`` (a linear probe, full batch, seeded); returns its validation accuracy.

    A random-weight backbone with a trained head makes real decisions with real margins, so
    INT8 top-1 agreement on real images means something (with a random head the top classes are
    ~1e-3 apart and any rounding flips them)."""
    from edgecompress.data.bundle import iter_batches
    from edgecompress.training import accuracy

    name, head = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0].detach()))
    labels = []
    with torch.no_grad():
        for x, y in iter_batches(data.train):
            model.eval()(x)
            labels.append(y)
    hook.remove()
    feats, y = torch.cat(captured), torch.cat(labels)
    torch.manual_seed(0)
    new = torch.nn.Linear(head.in_features, data.num_classes or int(y.max()) + 1)
    opt = torch.optim.Adam(new.parameters(), lr=1e-2, weight_decay=1e-4)
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    for _ in range(steps):  # on standardised features, then folded into the layer below
        opt.zero_grad()
        torch.nn.functional.cross_entropy(new((feats - mean) / std), y).backward()
        opt.step()
    with torch.no_grad():
        new.weight.div_(std)
        new.bias.sub_(new.weight @ mean)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    return accuracy(model.eval(), data.val)


def images_224(args: argparse.Namespace) -> ec.DataBundle:
    """Real images at 3×224×224: CIFAR-10 JPEGs when given, else the digits upscaled."""
    n = args.images
    if args.cifar:
        return ec.data.image_folder(args.cifar, image_size=224, batch_size=16, seed=0,
                                    val_fraction=0.5, limit=n, calib_size=n // 2)
    from sklearn.datasets import load_digits

    from edgecompress.data.tensors import bundle_from_arrays

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.images))[:n]
    x, y = bunch.images[order].astype(np.float32), bunch.target[order]
    half = n // 2
    return bundle_from_arrays(x[:half], y[:half], x[half:], y[half:], name="digits-224",
                              image_size=224, channels=3, batch_size=16, calib_size=half,
                              scale=1 / 16, class_names=[str(i) for i in range(10)])


# -- one model ---------------------------------------------------------------------------------
def quantized(model: torch.nn.Module, data: ec.DataBundle, args: argparse.Namespace
              ) -> ec.DeployableModel | str:
    """The INT8 (static PTQ) DeployableModel, or why there is none."""
    try:
        ptq = ec.passes.QuantizePTQ(samples=args.calib_samples, method=args.ptq_method)
    except AttributeError as exc:
        return f"QuantizePTQ unavailable: {exc}"
    try:
        return ec.Pipeline([ptq], measure=False).run(model, data)
    except ec.EdgeCompressError as exc:
        return f"QuantizePTQ failed: {str(exc)[:300]}"


def reference_facts(model: torch.nn.Module, data: ec.DataBundle, n: int) -> dict[str, Any]:
    """How informative parity is: the logit scale and how many classes the torch model picks
    on the parity samples (a random-weight net that always picks one class makes 100 % top-1
    agreement meaningless)."""
    with torch.no_grad():
        out = model.eval()(data.samples("val", n))
    return {"ref_logit_scale": float(out.abs().max()),
            "ref_distinct_top1": int(out.argmax(1).unique().numel())}


def plan(fmt: str, precision: str) -> tuple[dict[str, Any] | None, str | None]:
    """(export options, None), or (None, why this cell is skipped)."""
    spec = FORMATS[fmt]
    if not spec.available():
        missing = [m for m in spec.modules if not available(m)]
        return None, (f"not installed here: {', '.join(missing)} (pip install "
                      f"'edgecompress[{spec.extra}]')")
    try:
        load_object(spec.exporter)
    except (ImportError, AttributeError) as exc:
        return None, f"exporter missing: {exc}"
    if precision == "fp16" and not spec.fp16:
        return None, "format holds no fp16"
    if precision == "int8" and not spec.int8_static:
        return None, "format holds no static INT8"
    options = dict(FP16_OPTION.get(fmt, {})) if precision == "fp16" else {}
    return options, None


def artifact_path(root: Path, model: str, fmt: str, precision: str) -> Path:
    spec = FORMATS[fmt]
    stem = f"{model}_{precision}"
    return root / (f"{stem}_{fmt}" if spec.directory else f"{stem}{spec.suffixes[0]}")


def run_cell(dm: ec.DeployableModel, fmt: str, precision: str, path: Path,
             options: dict[str, Any], args: argparse.Namespace, model: str) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "format": fmt, "precision": precision}
    t0 = time.perf_counter()
    try:
        art = dm.export(fmt, path, threads=args.threads, benchmark_runs=args.runs,
                        parity_samples=args.parity_samples,
                        accuracy_samples=args.parity_samples, **options)
    except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the table
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc)[:400]}")
        if not isinstance(exc, ec.EdgeCompressError):
            row["traceback"] = traceback.format_exc(limit=4)[-1500:]
        return row
    p = art.parity
    row.update(status="ok", precision=art.precision, size_mb=art.size_bytes / 1e6,
               p50_ms=art.latency.p50_ms if art.latency else None,
               fps=1000.0 / art.latency.p50_ms if art.latency else None,
               max_abs_diff=p.max_abs_diff if p else None,
               top1_agreement=p.top1_agreement if p else None,
               parity_ok=p.passed if p else None, parity_vs=p.reference if p else None,
               accuracy=art.accuracy, export_s=time.perf_counter() - t0,
               notes={k: v for k, v in art.notes.items()
                      if k in ("float_fallback", "verified_with", "optimize_for_mobile",
                               "weights_dtype", "engine", "trtexec_command")})
    return row


def bench_model(name: str, args: argparse.Namespace, work: Path, data224: ec.DataBundle | None,
                digits16: ec.DataBundle, rows: list[dict[str, Any]], save: Any) -> None:
    if name == "resnet20_cifar":
        model, data = cifar_resnet20(args)
    else:
        data = digits16 if name == "demo" else data224
        assert data is not None
        model = (demo_model(data, args.demo_epochs) if name == "demo"
                 else torchvision_model(name, data))
    if name in TORCHVISION and args.probe:
        print(f"{name}: linear-probe head, val accuracy {probe_head(model, data):.3f}", flush=True)
    dm = ec.Pipeline([], measure=False).run(model, data)
    reference = reference_facts(model, data, args.parity_samples)
    dm_int8: ec.DeployableModel | str | None = None
    for fmt in args.formats or list(FORMATS):
        for precision in args.precisions:
            options, skip = plan(fmt, precision)
            if skip == "format holds no fp16":
                continue  # most formats: not worth a row
            if skip is not None:
                rows.append({"model": name, "format": fmt, "precision": precision,
                             "status": "skipped", "error": skip})
                print(_line(rows[-1]), flush=True)
                continue
            source = dm
            if precision == "int8":
                if dm_int8 is None:
                    dm_int8 = quantized(model, data, args)
                if isinstance(dm_int8, str):
                    rows.append({"model": name, "format": fmt, "precision": precision,
                                 "status": "skipped", "error": dm_int8})
                    continue
                source = dm_int8
            if fmt == "tensorrt" and not torch.cuda.is_available():
                options = {**(options or {}), "build": "device"}  # bundle: ONNX + trtexec
            path = artifact_path(work, name, fmt, precision)
            row = {**run_cell(source, fmt, precision, path, options or {}, args, name),
                   **reference}
            print(_line(row), flush=True)
            rows.append(row)
            save()


# -- output ------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _line(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"{r['model']:<19} {r['format']:<12} {r['precision']:<12} {r['status']}: " \
               f"{r.get('error', '')[:110]}"
    agree = None if r["top1_agreement"] is None else 100 * r["top1_agreement"]
    return (f"{r['model']:<19} {r['format']:<12} {r['precision']:<12} {r['size_mb']:>8.2f} "
            f"{_fmt(r['p50_ms'], '>9.2f')} {_fmt(r['fps'], '>8.1f')} "
            f"{_fmt(r['max_abs_diff'], '>10.2e')} {_fmt(agree, '>7.1f')} "
            f"{'PASS' if r['parity_ok'] else 'FAIL'}")


HEADER = (f"{'model':<19} {'format':<12} {'precision':<12} {'size MB':>8} {'p50 ms':>9} "
          f"{'FPS':>8} {'max|diff|':>10} {'top1 %':>7} parity")


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    intro = (f"Generated by `benchmarks/formats.py` on {env['date']} — {env['platform']}, "
             f"torch {env['torch']}, {env['threads']} thread(s), load average at start "
             f"{env['load_start']}, at end {env.get('load_end')}. Data for the 224×224 models: "
             f"{env['data_224']}. Latency: batch 1, p50 of {env['runs']} runs. torchvision "
             f"models have seeded random weights with BatchNorm statistics set on the data "
             f"and, unless --no-probe, a linear-probe head trained on the calibration half; "
             f"`resnet20_cifar` is the pretrained CIFAR ResNet-20 on CIFAR-10 JPEGs (trained "
             f"weights, real data). Parity is measured on held-out real images against the "
             f"torch model (INT8: the simulated INT8 model).")
    command = f"Command: `python benchmarks/formats.py {' '.join(env.get('argv', []))}`"
    legend = ("`ref classes` = distinct top-1 classes the torch model picks on the parity "
              "samples and `logit scale` its largest |logit|: with one class, top-1 agreement "
              "says nothing (random-weight nets often pick one class for every image).")
    header = ("| model | format | precision | size MB | p50 ms | FPS | max abs diff | "
              "top-1 agree | parity | accuracy | ref classes | logit scale | note |")
    lines = ["# Export formats benchmark", "", command, "", intro, "", legend, "", header,
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['format']} | {r['precision']} | | | | | | "
                         f"{r['status']} | | | | {r.get('error', '')[:160].replace('|', '/')} |")
            continue
        acc = r["accuracy"] if r["model"] in ("demo", "resnet20_cifar") else None
        agree = None if r["top1_agreement"] is None else 100 * r["top1_agreement"]
        note = "; ".join(f"{k}: {v}" for k, v in (r.get("notes") or {}).items())
        lines.append(f"| {r['model']} | {r['format']} | {r['precision']} | {r['size_mb']:.2f} | "
                     f"{_fmt(r['p50_ms'], '.2f')} | {_fmt(r['fps'], '.1f')} | "
                     f"{_fmt(r['max_abs_diff'], '.2e')} | {_fmt(agree, '.1f')}% | "
                     f"{'PASS' if r['parity_ok'] else 'FAIL'} | "
                     f"{_fmt(None if acc is None else 100 * acc, '.1f')} | "
                     f"{r.get('ref_distinct_top1', '—')} | {_fmt(r.get('ref_logit_scale'), '.3g')} | "
                     f"{note[:160].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    ec.set_progress(False)
    torch.set_num_threads(args.threads)
    unknown = [f for f in args.formats or [] if f not in FORMATS]
    if unknown:
        sys.exit(f"unknown formats {unknown}; the table has {sorted(FORMATS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "platform": platform.platform(), "python": platform.python_version(),
           "torch": torch.__version__, "cpus": os.cpu_count(), "threads": args.threads,
           "load_start": [round(v, 2) for v in os.getloadavg()], "runs": args.runs,
           "data_224": args.cifar or "sklearn digits upscaled to 3×224×224",
           "cuda": torch.cuda.is_available(), "argv": sys.argv[1:]}
    print(f"load average {env['load_start']} on {env['cpus']} CPUs; threads={args.threads}")
    rows: list[dict[str, Any]] = []
    result = {"environment": env, "rows": rows}

    def save() -> None:
        (out / f"formats{args.tag}.json").write_text(json.dumps(result, indent=1, default=str))
        (out / f"formats{args.tag}.md").write_text(markdown(result))

    digits16 = ec.data.digits(image_size=16, batch_size=64, seed=0)
    data224 = images_224(args) if any(m in TORCHVISION for m in args.models) else None
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="ec_formats_") as work:
        for name in args.models:
            bench_model(name, args, Path(work), data224, digits16, rows, save)
    env["load_end"] = [round(v, 2) for v in os.getloadavg()]
    save()
    print(f"\nload average at end {env['load_end']}; wrote {out}/formats{args.tag}.json and .md")


if __name__ == "__main__":
    main()
