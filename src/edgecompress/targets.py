"""Device target profiles: what a device implies for passes and exports.

``pipe.run(model, data, target="rpi5")`` and ``edgecompress compress --target rpi5`` use a profile
to fill options the user left at their defaults — quantization engine, channel rounding for
pruning — and :meth:`Target.export_options` gives per-format export defaults (ONNX opset, threads,
full-integer TFLite, TensorRT precision). The report lists every choice that came from the profile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import ConfigError
from .options import option_fields


@dataclass(frozen=True)
class Target:
    """One device profile."""

    name: str
    description: str
    arch: str  # "aarch64" or "x86_64"
    formats: tuple[str, ...]  # preferred export formats, best first
    threads: int
    quant_backend: str  # engine hint for quantization passes: "arm" or "x86"
    torchscript_engine: str  # "qnnpack" on ARM, "x86" on Intel/AMD
    onnx_opset: int
    round_to: int | None = None  # channel multiple for structured pruning (fast kernels)
    tflite_full_integer: bool = False  # int8 input/output (Coral Edge TPU)
    tensorrt_fp16: bool = False
    tensorrt_int8: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    # pass option -> the profile's value for it
    def pass_defaults(self) -> dict[str, Any]:
        return {"round_to": self.round_to, "backend": self.quant_backend}

    def apply(self, passes: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
        """Copies of ``passes`` with profile values for options still at their defaults."""
        out, applied = [], {}
        for i, p in enumerate(passes):
            changes = {}
            for f, _ in option_fields(p):
                value = self.pass_defaults().get(f.name)
                if value is None or f.default is dataclasses.MISSING:
                    continue
                if getattr(p, f.name) == f.default and f.default != value:
                    changes[f.name] = value
            if changes:
                p = p.replace(**changes)
                applied.update({f"{i + 1}.{p.name}.{k}": v for k, v in changes.items()})
            out.append(p)
        return out, applied

    def export_options(self, fmt: str, quant_scheme: str | None = None) -> dict[str, Any]:
        """Export defaults this device implies for ``fmt`` (user options override them).

        ``quant_scheme`` is the DeployableModel's recipe scheme (``"static"``, ``"dynamic"`` or
        None): full-integer input/output only applies to static INT8 models.
        """
        opts: dict[str, Any] = {}
        if fmt == "onnx":
            opts["opset"] = self.onnx_opset
        elif fmt == "tflite" and self.tflite_full_integer and quant_scheme == "static":
            opts["int8_io"] = True
        elif fmt == "torchscript":
            opts["engine"] = self.torchscript_engine
        elif fmt == "tensorrt":
            opts["fp16"] = self.tensorrt_fp16
        return opts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_ARM = {"arch": "aarch64", "quant_backend": "arm", "torchscript_engine": "qnnpack"}
_X86 = {"arch": "x86_64", "quant_backend": "x86", "torchscript_engine": "x86"}

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("rpi4", "Raspberry Pi 4 (4× Cortex-A72)", formats=("tflite", "onnx", "ncnn"),
           threads=4, onnx_opset=13, round_to=8,
           notes=("older ARM ONNX Runtime wheels: opset 13", "heatsink advised: throttles at 80 °C"),
           **_ARM),
    Target("rpi5", "Raspberry Pi 5 (4× Cortex-A76)", formats=("tflite", "onnx", "ncnn"),
           threads=4, onnx_opset=17, round_to=8, notes=("active cooler advised for sustained load",),
           **_ARM),
    Target("jetson-nano", "Jetson Nano (Maxwell GPU, JetPack 4: TensorRT 8.2, no INT8)",
           formats=("tensorrt", "onnx"), threads=4, onnx_opset=13, round_to=8,
           tensorrt_fp16=True, notes=("Maxwell has no INT8 tensor cores: FP16 engine",), **_ARM),
    Target("jetson-orin-nano", "Jetson Orin Nano (Ampere GPU)", formats=("tensorrt", "onnx"),
           threads=6, onnx_opset=17, round_to=16, tensorrt_fp16=True, tensorrt_int8=True, **_ARM),
    Target("jetson-orin-nx", "Jetson Orin NX (Ampere GPU)", formats=("tensorrt", "onnx"),
           threads=8, onnx_opset=17, round_to=16, tensorrt_fp16=True, tensorrt_int8=True, **_ARM),
    Target("jetson-agx-orin", "Jetson AGX Orin (Ampere GPU)", formats=("tensorrt", "onnx"),
           threads=12, onnx_opset=17, round_to=16, tensorrt_fp16=True, tensorrt_int8=True, **_ARM),
    Target("coral", "Coral Edge TPU (full-integer TFLite, int8 input/output)",
           formats=("tflite",), threads=4, onnx_opset=13, round_to=8, tflite_full_integer=True,
           notes=("compile the .tflite with edgetpu_compiler on the host",), **_ARM),
    Target("x86", "Generic x86-64 CPU (AVX2/AVX-512 VNNI)", formats=("onnx", "torchscript"),
           threads=4, onnx_opset=17, round_to=8, **_X86),
    Target("arm64", "Generic ARM64 CPU", formats=("onnx", "tflite", "ncnn"), threads=4,
           onnx_opset=17, round_to=8, **_ARM),
)}


def get_target(target: "str | Target") -> Target:
    """The profile named ``target`` (``-``/``_`` and case are ignored), or a ConfigError listing them."""
    if isinstance(target, Target):
        return target
    key = str(target).lower().replace("_", "-")
    aliases = {"raspberry-pi-4": "rpi4", "raspberry-pi-5": "rpi5", "x86-64": "x86",
               "aarch64": "arm64", "edgetpu": "coral"}
    key = aliases.get(key, key)
    if key not in TARGETS:
        raise ConfigError(f"unknown target '{target}'. Known targets: {', '.join(TARGETS)}")
    return TARGETS[key]
