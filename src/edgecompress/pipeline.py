"""Pipeline: an ordered list of typed passes, checked as a whole, run and measured stage by stage."""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from .convert.detector import head_on
from .convert.detector import prepare as prepare_detector
from .convert.source import check_input_shape, source_of
from .data.bundle import DataBundle
from .deployable import DeployableModel, InputSpec
from .detection import DetectionHead
from .errors import ChainError, ConfigError, EdgeCompressError, PassError
from .forms import Form
from .passes import Pass, PassContext, StageOutput, get_pass
from .report import Report, StageMetrics
from .stages import Measure, measure_stage
from .training import Recovery, seed_everything

log = logging.getLogger("edgecompress")


def _start_form(model: Any) -> Form:
    if isinstance(model, nn.Module):
        return Form.TORCH_FLOAT
    if type(model).__name__ == "ModelProto":
        return Form.ONNX_GRAPH
    raise ConfigError(f"Pipeline.run needs a torch.nn.Module (or an onnx.ModelProto), got "
                      f"{type(model).__name__}")


class Pipeline:
    """An ordered list of passes.

    ``Pipeline([...]).run(model, data)`` checks the chain of model forms and each pass's data
    needs before running anything, leaves ``model`` untouched (it works on a copy), runs the
    passes in order and measures every stage into ``DeployableModel.report``.

    Args:
        passes: the passes, in order.
        measure: what to measure per stage (``False`` measures sizes only — fastest).
        seed: seeds every pass (pass ``i`` runs with ``seed + i``) for reproducible runs.
        device: training device for passes that train (None: CUDA when available).
    """

    def __init__(self, passes: Sequence[Pass], measure: Measure | bool = True, seed: int = 0,
                 device: str | None = None):
        bad = [p for p in passes if not isinstance(p, Pass)]
        if bad:
            raise ConfigError(f"Pipeline takes Pass objects; got {type(bad[0]).__name__} "
                              f"({bad[0]!r}). Build passes with ec.passes.<Name>(...)")
        self.passes = list(passes)
        if measure is True:
            measure = Measure()
        elif measure is False:
            measure = Measure(accuracy=False, latency=False, macs=False)
        self.measure = measure
        self.seed = _recipe_seed(seed)
        self.device = device

    # -- checks ---------------------------------------------------------------------------------
    def check(self, start: Form = Form.TORCH_FLOAT) -> list[Form]:
        """The form after each pass; ChainError naming the first pass that cannot take its input."""
        forms = [start]
        for i, p in enumerate(self.passes):
            if forms[-1] not in p.accepts:
                raise ChainError(
                    f"pass {i + 1} '{p.name}' takes {' or '.join(f.value for f in p.accepts)}, "
                    f"but receives {forms[-1].value}"
                    + (f" from pass {i} '{self.passes[i - 1].name}'" if i else " (the input model)")
                    + ". Reorder the passes or add one that converts between these forms")
            forms.append(p.output_form(forms[-1]))
        return forms

    # -- run ------------------------------------------------------------------------------------
    def run(self, model: Any, data: DataBundle, *, target: Any = None, on_error: str = "raise",
            builder: str | None = None, task: str = "auto",
            head: DetectionHead | None = None) -> DeployableModel:
        """Run every pass on a copy of ``model``; return the DeployableModel.

        ``on_error="raise"`` (default) raises when a pass fails; the exception's ``partial``
        attribute holds a DeployableModel of the stages that succeeded. ``on_error="stop"``
        returns that DeployableModel instead, with the failure recorded in its report.
        ``target`` (a name such as ``"rpi5"`` or an ``ec.targets.Target``) fills pass options
        the user left at their defaults; the report says which.
        ``task="detect"`` / ``head`` make a detector: Ultralytics and torchvision SSD detectors
        are recognised (also with ``task="auto"``) and run as their raw head; any other needs
        ``head=ec.DetectionHead(...)`` describing its outputs. Its artifacts then carry the
        decode + NMS spec, and ``runner.detect(image)`` gives boxes
        (:mod:`edgecompress.convert.detector`).
        """
        if on_error not in ("raise", "stop"):
            raise ConfigError(f"on_error must be 'raise' or 'stop', got {on_error!r}")
        if not isinstance(data, DataBundle):
            raise ConfigError(f"Pipeline.run needs an ec.DataBundle as data, got "
                              f"{type(data).__name__}; see ec.data.digits() or ec.DataBundle(...)")
        passes, target_obj, target_notes = self._apply_target(target)
        forms = Pipeline(passes).check(_start_form(model))
        _check_data(passes, data)
        source = source_of(model)  # converted from ONNX/Keras: its measured parity and layout
        check_input_shape(source, data.example_input)
        work = copy.deepcopy(model)
        if isinstance(work, nn.Module):
            work = prepare_detector(work, data.example_input, task, head)
        state = _RunState(self, data, target_obj, builder, work, source)
        state.report.info["from_target"] = target_notes
        state.report.stages.append(measure_stage(state.work, forms[0], data, self.measure, "input"))
        state.report.stages[0].notes.update(source)
        # every run starts from the bundle's batches as given: same seed, same numbers
        with data.rewound():
            for i, p in enumerate(passes):
                try:
                    state.run_stage(i, p, _stage_name(p, passes[:i]), forms[i], forms[i + 1])
                except _StageFailed as failed:
                    partial = state.deployable(forms[i])
                    if on_error == "stop":
                        log.error("stage '%s' failed, stopping: %s", failed.stage, failed.exc)
                        return partial
                    err = _with_partial(failed.exc, failed.stage, i, partial)
                    if err is failed.exc:
                        raise err from None
                    raise err from failed.exc
        return state.deployable(forms[-1])

    def _apply_target(self, target: Any) -> tuple[list[Pass], Any, dict[str, Any]]:
        if target is None:
            return self.passes, None, {}
        from .targets import get_target

        t = get_target(target)
        passes, notes = t.apply(self.passes)
        return passes, t, notes

    # -- recipes -------------------------------------------------------------------------------
    def to_recipe(self) -> dict[str, Any]:
        """The pipeline as plain data (see :meth:`from_recipe`)."""
        return {"passes": [p.to_recipe() for p in self.passes], "seed": self.seed}

    @classmethod
    def from_recipe(cls, recipe: str | Path | dict[str, Any]) -> "Pipeline":
        """Build a pipeline from a recipe dict or a ``.json`` / ``.yaml`` file.

        A recipe is ``{"passes": [{"pass": "<name>", <option>: <value>, ...}, ...]}`` with the
        same option names and validation as the Python API. The chain of forms is checked too,
        so a bad recipe fails before any work.
        """
        data = _read_recipe(recipe) if not isinstance(recipe, dict) else recipe
        unknown = set(data) - {"passes", "seed"}
        if unknown:
            raise ConfigError(f"recipe: unknown key(s) {', '.join(sorted(unknown))}; a recipe "
                              f"has 'passes' (a list) and optionally 'seed'")
        items = data.get("passes")
        if not isinstance(items, list) or not items:
            raise ConfigError("recipe: 'passes' must be a non-empty list of "
                              "{'pass': <name>, <option>: <value>} entries")
        passes = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "pass" not in item:
                raise ConfigError(f"recipe: entry {i + 1} must be a mapping with a 'pass' key, "
                                  f"got {item!r}")
            options = {k: v for k, v in item.items() if k != "pass"}
            pass_cls = get_pass(str(item["pass"]))
            passes.append(pass_cls.from_recipe(options, where=f"recipe entry {i + 1} "
                                                              f"('{item['pass']}')"))
        pipe = cls(passes, seed=_recipe_seed(data.get("seed", 0)))
        pipe.check()
        return pipe

    def save_recipe(self, path: str | Path) -> Path:
        """Write :meth:`to_recipe` as JSON or YAML (by suffix)."""
        from ._io import atomic_write_bytes

        p = Path(path)
        if p.suffix in (".yaml", ".yml"):
            import yaml
            text = yaml.safe_dump(self.to_recipe(), sort_keys=False)
        else:
            text = json.dumps(self.to_recipe(), indent=2)
        return atomic_write_bytes(p, text.encode())

    def __repr__(self) -> str:
        return "Pipeline([" + ", ".join(p.describe() for p in self.passes) + "])"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.to_recipe() == other.to_recipe()


def _read_recipe(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"recipe file {p} does not exist")
    from ._yaml import MAX_RECIPE_BYTES, load_bounded

    if p.stat().st_size > MAX_RECIPE_BYTES:
        raise ConfigError(f"recipe file {p} is {p.stat().st_size:,} bytes; a recipe is at most "
                          f"{MAX_RECIPE_BYTES:,}")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            data = load_bounded(text)
        else:
            data = json.loads(text, parse_constant=_refuse_constant)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - yaml and json raise different types
        raise ConfigError(f"recipe file {p} is not valid {p.suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"recipe file {p} must hold a mapping with a 'passes' list")
    return data


def check_num_classes(model: nn.Module, data: DataBundle) -> None:
    """A bundle's num_classes that the model's output disagrees with would be written into every
    artifact's metadata (and mislabel predictions): refuse it before any work."""
    if not data.num_classes or data.example_input is None:
        return
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    from .data.inputs import call_model, head, to_device

    with torch.no_grad():
        out = call_model(model, to_device(head(data.example_input, 1), device))
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] != data.num_classes:
        raise ConfigError(f"the data says num_classes={data.num_classes}, but the model gives "
                          f"{out.shape[1]} outputs per sample; build the model for "
                          f"{data.num_classes} classes or fix DataBundle.num_classes")


def _refuse_constant(name: str) -> Any:
    raise ConfigError(f"the recipe holds {name}, which is not a number a recipe can use")


def _recipe_seed(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"Pipeline: 'seed' must be a non-negative integer, got "
                          f"{type(value).__name__} {value!r}")
    return value


def _check_data(passes: Sequence[Pass], data: DataBundle) -> None:
    """Every pass's (and recovery's) data needs, checked before any work."""
    for p in passes:
        p.check_data(data)
        recovery = getattr(p, "finetune", None)
        if isinstance(recovery, Recovery):  # e.g. training data: checked once, here
            recovery.check_data(data)
    _warn_training_after_fold(passes)


class _StageFailed(Exception):
    def __init__(self, stage: str, exc: Exception):
        super().__init__(stage)
        self.stage, self.exc = stage, exc


class _RunState:
    """One run's model, report, history and what the passes decided so far."""

    def __init__(self, pipe: "Pipeline", data: DataBundle, target: Any, builder: str | None,
                 work: Any, source: dict[str, Any]):
        self.pipe, self.data, self.builder = pipe, data, builder
        self.work = work.eval() if isinstance(work, nn.Module) else work
        if isinstance(self.work, nn.Module):
            check_num_classes(self.work, data)
        self.source = source
        # kept here: passes may rebuild the module (and drop the attribute it rides on)
        self.detection = head_on(work)
        self.ctx = PassContext(data=data, seed=pipe.seed, device=pipe.device, target=target)
        self.report = Report(info={"data": data.describe(), "seed": pipe.seed,
                                   "target": getattr(target, "name", None)})
        self.history: list[dict[str, Any]] = []  # what ran; what it measured is in the report
        self.structure: dict[str, list[Any]] = {}

    def run_stage(self, i: int, p: Pass, stage: str, form_in: Form, form_out: Form) -> None:
        ctx = self.ctx
        ctx.model_before, ctx.notes, ctx.stage_index = copy.deepcopy(self.work), {}, i + 1
        seed_everything(self.pipe.seed + i)
        log.info("stage %d/%d: %s", i + 1, len(self.pipe.passes), p.describe())
        t0 = time.perf_counter()
        try:
            out = p.run(self.work, ctx)
        except Exception as exc:  # noqa: BLE001 - recorded, then raised or stopped on
            self.work = ctx.model_before  # the pass may have changed the model part-way
            self.report.stages.append(StageMetrics(stage=stage, form=form_in.value,
                                                   seconds=time.perf_counter() - t0,
                                                   error=f"{type(exc).__name__}: {exc}"))
            raise _StageFailed(stage, exc) from exc
        finally:
            ctx.model_before = None
        self.accept(out if isinstance(out, StageOutput) else StageOutput(out))
        metrics = measure_stage(self.work, form_out, self.data, self.pipe.measure, stage)
        metrics.seconds, metrics.notes = time.perf_counter() - t0, dict(ctx.notes)
        self.report.stages.append(metrics)
        self.history.append({"pass": p.name, "options": p.to_recipe()})

    def accept(self, out: StageOutput) -> None:
        """Take a pass's output: the model, its notes, recipe, float model and structure."""
        self.work = out.model
        self.ctx.notes.update(out.notes)
        if out.recipe is not None:
            self.ctx.quant_recipe, self.ctx.float_model = out.recipe, out.float_model
        for key, changes in out.structure.items():
            self.structure.setdefault(key, []).extend(changes)

    def deployable(self, form: Form) -> DeployableModel:
        data = self.data
        assert data.example_input is not None
        layout = self.source.get("layout") or (data.preprocess.layout if data.preprocess
                                               else "NCHW")
        info = {"num_classes": data.num_classes,
                "class_names": list(data.class_names) if data.class_names else None,
                "preprocess": data.preprocess.to_dict() if data.preprocess else None,
                "data": data.name, "structure": self.structure,
                "target": getattr(self.ctx.target, "name", None)}
        if self.detection is not None:
            info["detection"] = self.detection.with_classes(data.class_names).to_dict()
        return DeployableModel(model=self.work,
                               input_spec=InputSpec.from_example(data.example_input, self.work,
                                                                 layout),
                               form=form, report=self.report, history=self.history,
                               quant_recipe=self.ctx.quant_recipe,
                               float_model=self.ctx.float_model, info=info, data=data,
                               builder=self.builder)


def _warn_training_after_fold(passes: Sequence[Pass]) -> None:
    """Training a network whose BatchNorm was folded away recovers far less (measured in
    benchmarks/cloud_to_edge.py: a ResNet-20 pruned to 30 % of its parameters after Fuse recovered
    only to 52 % top-1; pruned and recovered before Fuse, 77–78 %), so say so before the run
    starts."""
    folded = None
    for p in passes:
        if folded is not None and p.trains_float_model():
            log.warning("pass '%s' trains the model, but pass '%s' before it folded BatchNorm "
                        "away, which makes that training much less effective. Put '%s' after "
                        "the training passes (QuantizePTQ/QuantizeQAT fold BatchNorm themselves)",
                        p.name, folded.name, folded.name)
        if p.folds_batchnorm:
            folded = p


def _stage_name(p: Pass, earlier: Sequence[Pass]) -> str:
    n = sum(1 for q in earlier if q.name == p.name)
    return p.name if n == 0 else f"{p.name}#{n + 1}"


def _with_partial(exc: Exception, stage: str, index: int, partial: DeployableModel) -> Exception:
    if isinstance(exc, EdgeCompressError) and not isinstance(exc, PassError):
        err: Exception = exc
    else:
        err = PassError(f"pass {index + 1} '{stage}' failed: {type(exc).__name__}: {exc}", stage)
    err.partial = partial  # type: ignore[attr-defined]
    err.stage = stage  # type: ignore[attr-defined]
    return err
