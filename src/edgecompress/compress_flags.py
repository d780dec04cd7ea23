"""``edgecompress compress`` without a recipe file: the pass flags build the recipe.

Each group below is one pass (or recovery, or export format); every option flag in it is
derived from that class's option declarations (:mod:`edgecompress.cli_options`), so the flag
``--qat-epochs`` is ``QuantizeQAT.epochs`` with its doc, default and range. A pass enters the
pipeline when its switch (``--prune 0.3``, ``--int8``, ``--fuse`` ...) or any of its option
flags is given, in the order distill → structured prune → unstructured prune → fuse → INT8.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

from .cli_options import Flag, add_option_flags, build, given
from .errors import ConfigError

log = logging.getLogger("edgecompress")


@dataclass(frozen=True)
class PassFlags:
    """How one pass is switched on from the command line."""

    pass_name: str
    prefix: str
    switch: str  # the flag that turns the pass on
    switch_help: str
    switch_option: str | None = None  # the option the switch's value sets (None: a plain switch)
    skip: tuple[str, ...] = ()


PASS_FLAGS = (
    PassFlags("distill", "distill", "--distill-from", "train the --model (the student) on the "
              "outputs of this teacher: 'package.module:function' or a .ecm file",
              skip=("teacher", "student", "checkpoint")),
    PassFlags("structured_prune", "prune", "--prune", "structured pruning: remove this fraction "
              "of channels (StructuredPrune.ratio)", "ratio", skip=("finetune",)),
    PassFlags("unstructured_prune", "sparsity", "--sparsity", "unstructured pruning: zero this "
              "fraction of the weights (UnstructuredPrune.sparsity)", "sparsity",
              skip=("finetune",)),
    PassFlags("fuse", "fuse", "--fuse", "fold BatchNorm into the convolutions (Fuse)"),
    PassFlags("quantize_ptq", "int8", "--int8", "static INT8 post-training quantization "
              "(QuantizePTQ); any --qat-* flag quantizes with QAT instead"),
    PassFlags("quantize_qat", "qat", "--qat", "quantization-aware training (QuantizeQAT)",
              skip=("finetune",)),
    PassFlags("quantize_dynamic", "dynamic", "--int8-dynamic", "dynamic INT8 of Linear/LSTM/GRU "
              "layers (QuantizeDynamic)"),
)
RECOVERY_KINDS = ("finetune", "distill")
PASS_FLAG_NAMES = tuple(p.switch for p in PASS_FLAGS)


def add_pass_flags(parser: argparse.ArgumentParser) -> dict[str, list[Flag]]:
    """Register every pass group; returns pass name → its derived flags (for :func:`passes_from_args`)."""
    from .passes import get_pass
    from .passes.distill import DistillRecovery

    derived: dict[str, list[Flag]] = {}
    for pf in PASS_FLAGS:
        cls = get_pass(pf.pass_name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None
        group = parser.add_argument_group(f"pass {pf.pass_name} ({cls.__name__})", doc)
        dest = pf.switch[2:].replace("-", "_")
        if pf.switch_option is not None:
            group.add_argument(pf.switch, dest=dest, type=float, default=None, metavar="X",
                               help=pf.switch_help)
        elif pf.pass_name == "distill":
            group.add_argument(pf.switch, dest=dest, default=None, metavar="MODEL",
                               help=pf.switch_help)
            group.add_argument("--distill-weights", default=None, metavar="FILE",
                               help="state dict for the teacher (loaded with weights_only=True)")
        else:
            group.add_argument(pf.switch, dest=dest, action="store_true", help=pf.switch_help)
        skip = (*pf.skip, *([pf.switch_option] if pf.switch_option else []))
        derived[pf.pass_name] = add_option_flags(group, cls, pf.prefix, skip=skip)
    group = parser.add_argument_group(
        "recovery after structured pruning", "train the pruned model back (StructuredPrune."
        "finetune); any --prune-recover-* flag turns it on")
    group.add_argument("--prune-recover", choices=RECOVERY_KINDS, default=None,
                       help="fine-tune on labels, or distill from the unpruned model "
                            "[default: finetune when any --prune-recover-* flag is given]")
    derived["recover"] = add_option_flags(group, DistillRecovery, "prune-recover",
                                          skip=("checkpoint",))
    return derived


def _switched(args: argparse.Namespace, pf: PassFlags, values: dict[str, Any]) -> bool:
    switch = getattr(args, pf.switch[2:].replace("-", "_"))
    return bool(values) or (switch not in (None, False))


def passes_from_args(args: argparse.Namespace, derived: dict[str, list[Flag]],
                     load_teacher: Any = None) -> list[Any]:
    """The passes the flags ask for, built and validated like the API's (ConfigError if not)."""
    from .passes import get_pass

    chosen: dict[str, dict[str, Any]] = {}
    for pf in PASS_FLAGS:
        values = given(args, derived[pf.pass_name])
        if not _switched(args, pf, values):
            continue
        if pf.switch_option is not None:
            switch = getattr(args, pf.switch[2:].replace("-", "_"))
            if switch is not None:
                values[pf.switch_option] = switch
        chosen[pf.pass_name] = values
    if "quantize_qat" in chosen and "quantize_ptq" in chosen:
        if given(args, derived["quantize_ptq"]):
            raise ConfigError("--int8-* options set post-training quantization, --qat-* options "
                              "quantization-aware training: give the options of one of them")
        del chosen["quantize_ptq"]  # --int8 --qat-epochs N: INT8 through QAT
    recovery = _recovery(args, derived["recover"])
    if recovery is not None:
        if "structured_prune" not in chosen:
            raise ConfigError("--prune-recover* options need structured pruning (--prune X)")
        chosen["structured_prune"]["finetune"] = recovery
    if "distill" in chosen:
        if load_teacher is None or not args.distill_from:
            raise ConfigError("--distill-* options need the teacher: --distill-from MODEL")
        chosen["distill"]["teacher"] = load_teacher(args.distill_from, args.distill_weights)
    where = {pf.pass_name: f"{pf.switch} / --{pf.prefix}-* flags" for pf in PASS_FLAGS}
    return [build(get_pass(name), values, where=where[name]) for name, values in chosen.items()]


def _recovery(args: argparse.Namespace, flags: list[Flag]) -> Any:
    from .passes.distill import DistillRecovery
    from .training import FineTune

    values = given(args, flags)
    if args.prune_recover is None and not values:
        return None
    cls = DistillRecovery if args.prune_recover == "distill" else FineTune
    return build(cls, values, where=f"--prune-recover {cls.kind}")


def add_export_flags(parser: argparse.ArgumentParser) -> dict[str, list[Flag]]:
    """The options every export takes (``--allow-float-fallback`` ...) and, per format, its own
    (``--onnx-opset``, ``--tflite-int8-io`` ...), all derived from the exporters' Options."""
    from .export.base import ExportOptions
    from .formats import FORMATS
    from .registry import load_object

    group = parser.add_argument_group("every export", "verification and measurement of each "
                                                      "artifact (ExportOptions)")
    # threads and overwrite: the compress command's own --threads and --overwrite set them
    derived = {"*": add_option_flags(group, ExportOptions, skip=("threads", "overwrite"))}
    for spec in FORMATS.values():
        try:
            options = load_object(spec.exporter).Options
        except (ImportError, AttributeError):  # a plugin format that does not import here
            continue
        group = parser.add_argument_group(f"--export {spec.name}", spec.description)
        derived[spec.name] = add_option_flags(group, options, spec.name, only_own=ExportOptions)
    return derived


def export_options(args: argparse.Namespace, derived: dict[str, list[Flag]], fmt: str) -> dict[str, Any]:
    """The export options the user gave for ``fmt`` (shared ones first, the format's own after)."""
    return {**given(args, derived["*"]), **given(args, derived.get(fmt, []))}


def formats_given_options(args: argparse.Namespace, derived: dict[str, list[Flag]],
                          formats: list[str]) -> None:
    """ConfigError for options of a format that is not exported (a typo would go unnoticed)."""
    for fmt, flags in derived.items():
        if fmt != "*" and fmt not in formats and given(args, flags):
            names = ", ".join(f"--{f.dest.replace('_', '-')}" for f in flags
                              if getattr(args, f.dest) is not None)
            raise ConfigError(f"{names} set options of the {fmt} export, but --export does not "
                              f"include {fmt} (exporting: {', '.join(formats)})")
