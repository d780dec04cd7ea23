"""DataBundle: the one data contract of edgecompress.

A bundle holds the loaders a pipeline needs — ``train`` (fine-tuning, distillation, QAT),
``val`` (accuracy in the report, parity checks), ``calib`` (INT8 calibration) — plus an example
input, the number of classes and how raw inputs are preprocessed. A loader is anything iterable
that yields ``(inputs, labels)`` batches (a ``torch.utils.data.DataLoader`` typically).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import torch

from ..errors import DataError


@dataclass(frozen=True)
class Preprocess:
    """How a raw image becomes a model input: ``(pixel * scale - mean) / std`` in ``layout``."""

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "layout": self.layout,
                "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(mean=tuple(d.get("mean", ())), std=tuple(d.get("std", ())),
                   layout=d.get("layout", "NCHW"), scale=float(d.get("scale", 1 / 255)))


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` from a batch that is ``(x, y)``, ``[x, y]``, ``{"input":…, "label":…}`` or ``x``."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        x = batch.get("input", batch.get("x", batch.get("image")))
        y = batch.get("label", batch.get("y", batch.get("target")))
        return x, y
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise DataError(f"a loader yielded a {type(batch).__name__}; expected a tensor, an "
                    f"(inputs, labels) pair or a dict with 'input' and 'label'")


def check_inputs(x: Any, where: str) -> torch.Tensor:
    """Raise DataError unless ``x`` is a non-empty, finite, floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{where}: inputs must be torch tensors, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DataError(f"{where}: inputs have dtype {x.dtype}; expected a floating-point "
                        f"tensor (normalise raw uint8 images to float first)")
    if x.numel() == 0:
        raise DataError(f"{where}: a batch is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"{where}: inputs contain {bad} NaN/Inf values; clean or drop them")
    return x


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def iter_batches(loader: Iterable[Any], limit_samples: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(x, y)`` batches, stopping once ``limit_samples`` inputs have been yielded."""
    seen = 0
    for batch in loader:
        x, y = split_batch(batch)
        if limit_samples is not None:
            room = limit_samples - seen
            if room <= 0:
                return
            if x.shape[0] > room:
                x, y = x[:room], (y[:room] if y is not None else None)
        seen += x.shape[0]
        yield x, y


@dataclass
class DataBundle:
    """Loaders and facts about the data a pipeline compresses for.

    Args:
        train: batches for fine-tuning, distillation and QAT.
        val: batches for accuracy and parity checks.
        calib: batches for INT8 calibration (defaults to ``train`` when not given).
        example_input: one input with its batch dimension (taken from the data when omitted).
        num_classes: number of output classes (for classification metrics and checks).
        class_names: optional names, stored in artifact metadata.
        preprocess: how raw inputs are normalised, stored in artifact metadata.
        name: a label for reports.
    """

    train: Iterable[Any] | None = None
    val: Iterable[Any] | None = None
    calib: Iterable[Any] | None = None
    example_input: torch.Tensor | None = None
    num_classes: int | None = None
    class_names: Sequence[str] | None = None
    preprocess: Preprocess | None = None
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.train is None and self.val is None and self.calib is None \
                and self.example_input is None:
            raise DataError("DataBundle is empty: give at least one of train, val, calib or "
                            "example_input")
        for role in ("train", "val", "calib"):
            self._check_loader(role)
        if self.calib is None and self.train is not None:
            self.calib = self.train
        if self.example_input is None:
            self.example_input = self._first_input()[:1].clone()
        check_inputs(self.example_input, "DataBundle.example_input")
        if self.example_input.dim() == 0:
            raise DataError("DataBundle.example_input must have a batch dimension")
        if self.num_classes is not None and self.num_classes < 1:
            raise DataError(f"DataBundle.num_classes must be >= 1, got {self.num_classes}")
        if self.class_names is not None and self.num_classes is not None \
                and len(self.class_names) != self.num_classes:
            raise DataError(f"DataBundle.class_names has {len(self.class_names)} names but "
                            f"num_classes is {self.num_classes}")

    # -- validation -------------------------------------------------------------------------
    def _check_loader(self, role: str) -> None:
        loader = getattr(self, role)
        if loader is None:
            return
        if _length(loader) == 0:
            raise DataError(f"DataBundle.{role} is empty (it yields no batches)")
        tensors = _tensor_dataset_inputs(loader)
        if tensors is not None:  # in-memory data: check all of it, it is cheap
            check_inputs(tensors, f"DataBundle.{role}")
            return
        try:
            first = next(iter(loader))
        except StopIteration:
            raise DataError(f"DataBundle.{role} is empty (it yields no batches)") from None
        check_inputs(split_batch(first)[0], f"DataBundle.{role} (first batch)")

    def _first_input(self) -> torch.Tensor:
        for role in ("val", "calib", "train"):
            loader = getattr(self, role)
            if loader is not None:
                return split_batch(next(iter(loader)))[0]
        raise DataError("DataBundle has no loader to take an example input from")

    # -- access -------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input without the batch dimension."""
        assert self.example_input is not None
        return tuple(self.example_input.shape[1:])

    def require(self, role: str, why: str) -> Iterable[Any]:
        """The loader for ``role`` or a DataError that says which pass needed it."""
        loader = getattr(self, role)
        if loader is None:
            raise DataError(f"{why} needs DataBundle.{role}, which was not given")
        return loader

    def samples(self, role: str = "val", n: int = 64) -> torch.Tensor:
        """Up to ``n`` inputs from ``role`` stacked in one tensor (for parity checks)."""
        loader = getattr(self, role) or self.calib or self.train
        if loader is None:
            assert self.example_input is not None
            return self.example_input
        xs = [x for x, _ in iter_batches(loader, n)]
        return torch.cat(xs) if xs else self.example_input  # type: ignore[return-value]

    def calibration_inputs(self, n: int) -> torch.Tensor:
        """``n`` calibration inputs, each checked for NaN/Inf; errors say how many were found."""
        loader = self.require("calib", "INT8 calibration")
        xs = [check_inputs(x, "calibration data") for x, _ in iter_batches(loader, n)]
        if not xs:
            raise DataError("calibration data is empty: DataBundle.calib yields no samples")
        return torch.cat(xs)

    def num_batches(self, role: str) -> int | None:
        """How many batches ``role`` ('train', 'val', 'calib') yields, when the loader knows."""
        loader = getattr(self, role)
        return None if loader is None else _length(loader)

    @contextlib.contextmanager
    def rewound(self) -> Iterator[None]:
        """Rewind every loader's shuffling and augmentation generators afterwards.

        A DataLoader's generator advances with each epoch, so without this a second
        ``Pipeline.run`` on the same bundle (or a later run of a benchmark) would train on other
        batches than the first and give other numbers for the same seed."""
        with contextlib.ExitStack() as stack:
            for loader in (self.train, self.val, self.calib):
                if loader is not None:
                    stack.enter_context(same_batches(loader))
            yield

    def describe(self) -> dict[str, Any]:
        """A short description of the data (name, splits, shapes) for reports."""
        return {"name": self.name, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes,
                "class_names": list(self.class_names) if self.class_names else None,
                "preprocess": self.preprocess.to_dict() if self.preprocess else None,
                "batches": {r: self.num_batches(r) for r in ("train", "val", "calib")}}


@contextlib.contextmanager
def same_batches(loader: Iterable[Any]) -> Iterator[None]:
    """Rewind a shuffling DataLoader's generator afterwards, so the next run sees the same batches.

    Wrappers that keep the wrapped loader as ``.loader`` (e.g. ``ec.data.RandomShiftFlip``) are
    followed, and their own generators rewound too: the same augmentations in the same order."""
    states = [(gen, gen.get_state()) for gen in _generators(loader)]
    try:
        yield
    finally:
        for gen, state in states:
            gen.set_state(state)


def _generators(loader: Any) -> list[torch.Generator]:
    found = []
    for _ in range(8):  # a chain of wrappers, not a cycle
        gen = getattr(loader, "generator", None)
        if isinstance(gen, torch.Generator):
            found.append(gen)
        loader = getattr(loader, "loader", None)
        if loader is None:
            break
    return found


def _tensor_dataset_inputs(loader: Any) -> torch.Tensor | None:
    dataset = getattr(loader, "dataset", None)
    tensors = getattr(dataset, "tensors", None)
    if tensors:
        return tensors[0]
    return None


def take(loader: Iterable[Any], n_batches: int) -> list[Any]:
    """The first ``n_batches`` batches of a loader."""
    return list(itertools.islice(loader, n_batches))
