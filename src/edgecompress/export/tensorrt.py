"""TensorRT exporter: torch → ONNX (QDQ for INT8) → engine built with TensorRT's Python API.

``build="here"`` (default) builds the engine now and needs the ``tensorrt`` package and a CUDA
GPU — the engine only runs on the GPU model and TensorRT version it was built with.
``build="device"`` needs neither: it writes a *build bundle* folder to copy to the target (a
Jetson, say) and build there::

    model_trt/
        model.onnx         # the graph TensorRT parses (QDQ for INT8), verified with ONNX Runtime
        build_engine.sh    # the exact trtexec command
        build_engine.py    # the same build through TensorRT's Python API (no edgecompress needed)
        edgecompress.json  # metadata, sha256 of model.onnx, the trtexec command

INT8 is explicit quantization: TensorRT only takes symmetric signed INT8 Q/DQ (zero point 0),
so the graph is quantized here with ONNX Runtime's quantizer in that mode on the recipe's
calibration samples (ORT's CPU QDQ files use uint8 activations, which TensorRT rejects).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._extras import require
from .._io import atomic_path
from ..errors import ConfigError, ExportError
from ..job import ExportJob
from ..metadata import write_sidecar
from ..onnx_utils import load_onnx, write_metadata
from ..options import option
from .base import Exporter, ExportOptions, ExportPlan
from .onnx import export_float_onnx
from .ort_calibrate import equal_batch_size
from .ort_quant import CalibrationReader, calibration_method
from .verify import Verification

if TYPE_CHECKING:
    from ..runtime.base import Runner

log = logging.getLogger("edgecompress")

ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
INPUT_NAME = "input"  # export_float_onnx's input name


@dataclass
class TensorRTOptions(ExportOptions):
    fp16: bool = option(False, "Allow fp16 kernels (BuilderFlag.FP16, trtexec --fp16).")
    build: str = option("here", "'here': build the engine now (needs tensorrt and a CUDA GPU); "
                        "'device': write a folder with the ONNX, the trtexec command and "
                        "build_engine.py, to build on the target device.",
                        choices=("here", "device"))
    workspace_mb: int = option(1024, "Builder workspace memory pool limit in MiB.", low=16)
    dynamic_batch: bool = option(True, "Build for a range of batch sizes (optimization "
                                       "profile min/opt/max_batch); False: batch 1 only.")
    min_batch: int = option(1, "Smallest batch of the optimization profile.", low=1)
    opt_batch: int = option(1, "Batch size TensorRT tunes kernels for.", low=1)
    max_batch: int = option(8, "Largest batch of the optimization profile.", low=1)
    opset: int = option(17, "ONNX opset of the graph TensorRT parses.", low=13, high=21)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"TensorRTOptions: the batch profile needs min_batch <= opt_batch "
                              f"<= max_batch; got {self.min_batch}, {self.opt_batch}, "
                              f"{self.max_batch}")


def build_engine(onnx_path: str, engine_path: str, fp16: bool = False, int8: bool = False,
                 workspace_mb: int = 1024, input_name: str = "input",
                 shapes: tuple | None = None) -> str:
    """Build a TensorRT engine from an ONNX file with TensorRT's Python API (TensorRT 10).

    ``shapes`` is (min, opt, max) input shapes for a dynamic batch, None for a static graph.
    Returns the TensorRT version. Self-contained: the build bundle's build_engine.py holds
    this very function's source.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise RuntimeError(f"TensorRT {trt.__version__} has no FP16 builder flag (removed "
                               f"in TensorRT 11); build the fp32 engine or use TensorRT 10")
        config.set_flag(trt.BuilderFlag.FP16)
    if int8 and hasattr(trt.BuilderFlag, "INT8"):
        # the Q/DQ nodes carry the scales (explicit quantization); the flag lets TensorRT
        # pick INT8 kernels for them (TensorRT 11 needs no flag and has none)
        config.set_flag(trt.BuilderFlag.INT8)
    if shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, tuple(shapes[0]), tuple(shapes[1]), tuple(shapes[2]))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine; its log above says why")
    with open(engine_path, "wb") as fh:
        fh.write(serialized)
    return str(trt.__version__)


def profile_shapes(opts: Any, sample_shape: tuple[int, ...]) -> tuple[list[int], ...] | None:
    """(min, opt, max) input shapes of the optimization profile, None for a static graph."""
    if not opts.dynamic_batch:
        return None
    rest = list(sample_shape[1:])
    return ([opts.min_batch, *rest], [opts.opt_batch, *rest], [opts.max_batch, *rest])


def trtexec_command(opts: Any, precision: str, shapes: tuple[list[int], ...] | None,
                    onnx_file: str = ONNX_FILE, engine_file: str = ENGINE_FILE,
                    trtexec: str = "trtexec") -> list[str]:
    """The trtexec arguments that build the same engine as :func:`build_engine`."""
    cmd = [trtexec, f"--onnx={onnx_file}", f"--saveEngine={engine_file}",
           f"--memPoolSize=workspace:{opts.workspace_mb}M"]
    if opts.fp16 or precision == "fp16":
        cmd.append("--fp16")
    if precision.startswith("int8"):
        cmd.append("--int8")
    if shapes is not None:
        for flag, shape in zip(("min", "opt", "max"), shapes):
            cmd.append(f"--{flag}Shapes={INPUT_NAME}:" + "x".join(str(d) for d in shape))
    return cmd


def symmetric_qdq(float_path: Path, out_path: Path, job: ExportJob) -> dict[str, Any]:
    """Quantize a float ONNX to the symmetric signed INT8 Q/DQ graph TensorRT accepts."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recipe = job.recipe
    assert recipe is not None
    if job.calibration is None or job.calibration.shape[0] == 0:
        raise ExportError("the static INT8 recipe carries no calibration samples, so the "
                          "TensorRT Q/DQ graph cannot be calibrated; re-run the quantization "
                          "pass with data")
    if recipe.skip or recipe.skipped_layers:
        raise ExportError("the INT8 recipe keeps some layers float (skip=), which the TensorRT "
                          "exporter does not map onto the graph yet; export to 'onnx' (which "
                          "honours skip=) or quantize without skip")
    samples = job.calibration.float().cpu().numpy()
    prepared = out_path.with_name("prepared.onnx")
    quant_pre_process(str(float_path), str(prepared), skip_optimization=True)
    with tempfile.TemporaryDirectory() as work:
        cache, sources = _cache(prepared, samples, recipe, Path(work))
        # equal batches: ORT's histogram collector cannot stack a smaller last batch
        reader = CalibrationReader(samples, INPUT_NAME, batch_size=equal_batch_size(len(samples)))
        quantize_static(str(prepared), str(out_path), reader,
                        quant_format=QuantFormat.QDQ, per_channel=recipe.per_channel,
                        reduce_range=False, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=calibration_method(recipe.method),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
                        **cache)
    prepared.unlink(missing_ok=True)
    check_symmetric_int8(out_path)
    return {"quantizer": "onnxruntime quantize_static, symmetric int8 Q/DQ for TensorRT",
            "calibration": f"{recipe.method} on {samples.shape[0]} samples of the recipe",
            **sources}


def _cache(prepared: Path, samples: Any, recipe: Any,
           work: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The recipe's ranges as ORT's calibration cache (calibrated once: only tensors the
    simulated model has no quantizer for are calibrated here); ORT's own calibration when this
    ONNX Runtime reads no cache."""
    import onnx

    from .onnx_quant import _layer_nodes
    from .ort_calibrate import supports_cache, write_calibration_cache
    from .recipe_ranges import tensor_ranges

    if not supports_cache():
        return {}, {}
    proto = onnx.load(str(prepared))
    known = tensor_ranges(proto, _layer_nodes(proto, recipe)[0], recipe)
    path, _, sources = write_calibration_cache(prepared, samples, INPUT_NAME, recipe.method,
                                               work, known=known)
    return {"calibration_cache_path": str(path)}, sources


def check_symmetric_int8(path: Path) -> int:
    """Count the graph's QuantizeLinear nodes; raise unless all are int8 with zero point 0."""
    from onnx import numpy_helper

    proto = load_onnx(path)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    quant = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    if not quant:
        raise ExportError(f"{path.name} holds no QuantizeLinear node: nothing was quantized")
    for node in quant:
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zp is None or zp.dtype.name != "int8" or zp.any():
            raise ExportError(f"TensorRT needs symmetric signed INT8 Q/DQ, but {node.name} has "
                              f"zero point {None if zp is None else zp.tolist()}")
    return len(quant)


class TensorRTExporter(Exporter):
    """Builds ``.engine`` files, or a build bundle folder; options in :class:`TensorRTOptions`."""

    Options = TensorRTOptions

    def check_path(self, path: Path) -> None:
        if path.suffix and path.suffix.lower() not in self.spec.suffixes:
            raise ConfigError(f"tensorrt artifacts are {' or '.join(self.spec.suffixes)} files "
                              f"(build='here') or a folder without a suffix (build='device'); "
                              f"got {path}")

    def write(self, job: ExportJob, tmp: Path, opts: Any, precision: str) -> dict[str, Any]:
        if opts.build == "device":
            if tmp.suffix:
                raise ConfigError(f"build='device' writes a bundle folder; give a folder path "
                                  f"without a suffix (e.g. out/model_trt), not {tmp.name}")
            tmp.mkdir(parents=True)
            return self.write_bundle(job, tmp, opts, precision)
        if not tmp.suffix:
            raise ConfigError(f"build='here' writes an engine file; give a path ending in "
                              f"{' or '.join(self.spec.suffixes)}, or pass build='device' to "
                              f"write a build bundle folder")
        require("tensorrt", "tensorrt", "Building a TensorRT engine here (or pass "
                "build='device' to write the ONNX and the trtexec command and build on the "
                "device; Jetsons ship TensorRT with JetPack)")
        import torch

        if not torch.cuda.is_available():
            raise ExportError("building a TensorRT engine needs a CUDA GPU and none is visible "
                              "here. Pass build='device' to write the ONNX, the trtexec command "
                              "and build_engine.py, and build on the target device")
        with tempfile.TemporaryDirectory(prefix="ec_trt_") as work:
            onnx_path = Path(work) / ONNX_FILE
            notes = self.write_onnx(job, onnx_path, opts, precision)
            shapes = profile_shapes(opts, tuple(job.example.shape))
            try:
                notes["tensorrt_version"] = build_engine(
                    str(onnx_path), str(tmp), fp16=opts.fp16 or precision == "fp16",
                    int8=precision.startswith("int8"), workspace_mb=opts.workspace_mb,
                    input_name=INPUT_NAME, shapes=shapes)
            except RuntimeError as exc:
                raise ExportError(str(exc)) from exc
        notes.update(self.build_notes(opts, precision, shapes), engine_built=True,
                     gpu=torch.cuda.get_device_name(0))
        return notes

    def write_onnx(self, job: ExportJob, path: Path, opts: Any,
                   precision: str) -> dict[str, Any]:
        """The graph TensorRT parses: float ONNX, or symmetric INT8 Q/DQ for INT8 recipes."""
        model = copy.deepcopy(job.source).cpu().eval()
        if not precision.startswith("int8"):
            return export_float_onnx(model, job.example, path, opts.opset, opts.dynamic_batch)[1]
        float_path = path.with_name("float.onnx")
        _, notes = export_float_onnx(model, job.example, float_path, opts.opset, opts.dynamic_batch)
        notes.update(symmetric_qdq(float_path, path, job))
        float_path.unlink()
        return notes

    def build_notes(self, opts: Any, precision: str,
                    shapes: tuple[list[int], ...] | None) -> dict[str, Any]:
        return {"fp16_kernels": bool(opts.fp16 or precision == "fp16"),
                "int8_kernels": precision.startswith("int8"), "workspace_mb": opts.workspace_mb,
                "profile_shapes": {"min": shapes[0], "opt": shapes[1], "max": shapes[2]}
                if shapes else None,
                "trtexec_command": shlex.join(trtexec_command(opts, precision, shapes))}

    def write_bundle(self, job: ExportJob, folder: Path, opts: Any,
                     precision: str) -> dict[str, Any]:
        notes = self.write_onnx(job, folder / ONNX_FILE, opts, precision)
        shapes = profile_shapes(opts, tuple(job.example.shape))
        notes.update(self.build_notes(opts, precision, shapes), engine_built=False,
                     bundle_files=[ONNX_FILE, "build_engine.sh", "build_engine.py"])
        command = trtexec_command(opts, precision, shapes, trtexec='"$TRTEXEC"')
        (folder / "build_engine.sh").write_text(_SHELL.format(command=" ".join(command)))
        (folder / "build_engine.sh").chmod(0o755)
        (folder / "build_engine.py").write_text(_PYTHON.format(
            source=inspect.getsource(build_engine), fp16=notes["fp16_kernels"],
            int8=notes["int8_kernels"], workspace=opts.workspace_mb, input=INPUT_NAME,
            shapes=None if shapes is None else tuple(tuple(s) for s in shapes)))
        log.warning("TensorRT engine NOT built here: build it on the device with %s/"
                    "build_engine.sh (trtexec) or build_engine.py", folder.name)
        return notes

    def store_metadata(self, path: Path, metadata: dict[str, Any]) -> None:
        if path.is_dir():  # the bundle's ONNX carries it too, for whoever runs it alone
            proto = load_onnx(path / ONNX_FILE)
            write_metadata(proto, metadata)
            import onnx

            with atomic_path(path / ONNX_FILE, overwrite=True) as tmp:  # our own file
                onnx.save(proto, str(tmp))
            write_sidecar(path, metadata, [path / ONNX_FILE])
        else:
            write_sidecar(path, metadata, [path])

    def plan(self, recipe: Any, options: dict[str, Any]) -> ExportPlan:
        plan = super().plan(recipe, options)
        if plan.opts.build != "device":
            return plan
        # a bundle is verified with ONNX Runtime, whose latency is not the engine's: none is kept
        return dataclasses.replace(plan, opts=dataclasses.replace(plan.opts, benchmark_runs=0))

    def open_runner(self, path: Path, opts: Any, metadata: dict[str, Any]) -> Runner:
        if path.is_dir():  # a build bundle: the ONNX TensorRT will parse, run by ONNX Runtime
            return _qdq_reference_runner(path / ONNX_FILE, opts.threads)
        return super().open_runner(path, opts, metadata)

    def record(self, artifact: Any, checked: Verification) -> None:
        if artifact.path.is_dir():
            checked.parity.reference += " (bundle ONNX run by ONNX Runtime; engine not built)"
            artifact.notes["verified_with"] = ("onnxruntime on model.onnx, basic graph "
                                               "optimizations (engine not built here)")
            artifact.metadata["verified_with"] = artifact.notes["verified_with"]
        super().record(artifact, checked)


def _qdq_reference_runner(path: Path, threads: int | None) -> Runner:
    """ONNX Runtime on ``path`` with only basic graph optimizations: the Q/DQ graph evaluated
    as the ONNX spec defines it, which is what TensorRT implements.

    ORT's extended QDQ fusions give wrong results on symmetric-int8 Conv→Q/DQ→Relu graphs
    (measured with ORT 1.31.1 on the digits CNN: 37.5 % top-1 agreement instead of 100 %).
    """
    import onnxruntime as ort

    from ..runtime.ort import OrtRunner

    class QdqReferenceRunner(OrtRunner):
        def _load(self) -> None:
            super()._load()
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            if self.threads:
                options.intra_op_num_threads = int(self.threads)
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])

    return QdqReferenceRunner(path, threads=threads, verify=False)  # written just now, by us


_SHELL = """#!/bin/sh
# Build the TensorRT engine on the target device (e.g. a Jetson with JetPack) from model.onnx.
# Written by edgecompress. On JetPack, trtexec lives in /usr/src/tensorrt/bin.
set -e
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
{command}
echo "built model.engine; run it with: edgecompress.load('model.engine')"
"""

_PYTHON = '''"""Build model.engine from model.onnx with TensorRT's Python API (written by edgecompress).

Run on the target device: python3 build_engine.py   (needs only the tensorrt package)
Writes model.engine and model.engine.json (the bundle's metadata with the engine's sha256).
"""

from __future__ import annotations  # the annotations below also parse on JetPack's Python 3.8

import hashlib
import json
import os


{source}

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    engine = os.path.join(here, "model.engine")
    version = build_engine(os.path.join(here, "model.onnx"), engine, fp16={fp16},
                           int8={int8}, workspace_mb={workspace}, input_name={input!r},
                           shapes={shapes!r})
    with open(os.path.join(here, "edgecompress.json")) as fh:
        meta = json.load(fh)
    with open(engine, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    meta.update(engine_built=True, tensorrt_version=version,
                weights_sha256={{"model.engine": digest}})
    meta.pop("parity", None)  # measured on the ONNX, not on this engine
    with open(engine + ".json", "w") as fh:
        json.dump(meta, fh, indent=2)
    print("built", engine, "with TensorRT", version)
'''
