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
    """How a raw image becomes a model input: resized to the input's size (``resize="stretch"``,
    or ``"letterbox"``: aspect kept, padded with ``pad_value`` centred, as YOLO detectors are
    trained), channels in ``channel_order``, then ``(pixel * scale - mean) / std`` in ``layout``."""

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0
    resize: str = "stretch"
    pad_value: float = 114.0
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.resize not in ("stretch", "letterbox"):
            raise DataError(f"Preprocess resize must be 'stretch' or 'letterbox'; got "
                            f"{self.resize!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise DataError(f"Preprocess channel_order must be 'RGB' or 'BGR'; got "
                            f"{self.channel_order!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "layout": self.layout,
                "scale": self.scale, "resize": self.resize, "pad_value": self.pad_value,
                "channel_order": self.channel_order}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(mean=tuple(d.get("mean", ())), std=tuple(d.get("std", ())),
                   layout=d.get("layout", "NCHW"), scale=float(d.get("scale", 1 / 255)),
                   resize=d.get("resize", "stretch"), pad_value=float(d.get("pad_value", 114.0)),
                   channel_order=d.get("channel_order", "RGB"))


_LABEL_KEYS = ("label", "labels", "y", "target", "targets")


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """``(inputs, labels)`` from a batch: a tensor (no labels), an ``(inputs, labels)`` pair whose
    inputs are a tensor, a tuple or a dict of tensors, or a dict of named model inputs (a
    tokenizer's ``{"input_ids", "attention_mask"}``; no labels). A dict that also holds labels
    is refused: say which keys are inputs with ``DataBundle(transform=..., labels=...)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        found = [k for k in _LABEL_KEYS if k in batch]
        if found:
            raise DataError(f"a loader yielded a dict with keys {sorted(batch)}; which are the "
                            f"model's inputs is not guessed: pass DataBundle(transform=lambda "
                            f"b: {{k: b[k] for k in (...)}}, labels=lambda b: b[{found[0]!r}])")
        return dict(batch), None
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise DataError(f"a loader yielded a {type(batch).__name__}; expected a tensor, an "
                    f"(inputs, labels) pair or a dict of named input tensors (or pass "
                    f"DataBundle(transform=...) to turn each batch into model inputs)")


class Transformed:
    """A loader whose batches go through ``transform(batch) -> model inputs`` (NNCF's
    ``Dataset(source, transform)``) and, optionally, ``labels(batch) -> labels``; it yields
    ``(inputs, labels)`` pairs. ``loader`` is kept so its shuffling state can be rewound."""

    def __init__(self, loader: Iterable[Any], transform: Any, labels: Any = None):
        self.loader, self.transform, self.labels = loader, transform, labels

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for batch in self.loader:
            x = self.transform(batch) if self.transform is not None else split_batch(batch)[0]
            yield x, (self.labels(batch) if self.labels is not None else None)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def check_inputs(x: Any, where: str) -> Any:
    """Raise DataError unless ``x`` is model inputs (a tensor, a tuple or a dict of tensors),
    each non-empty, with finite floating-point values (integer ids and bool masks pass)."""
    from .inputs import is_inputs, named

    if not is_inputs(x):
        raise DataError(f"{where}: model inputs must be a torch tensor, a tuple or a dict of "
                        f"tensors, got {type(x).__name__} (a transform= can build them)")
    for name, t in named(x).items():
        label = where if isinstance(x, torch.Tensor) else f"{where}, input {name!r}"
        if t.numel() == 0:
            raise DataError(f"{label}: a batch is empty (shape {tuple(t.shape)})")
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise DataError(f"{label}: inputs contain {bad} NaN/Inf values; clean or drop them")
        if not (t.is_floating_point() or t.dtype in _INT_DTYPES):
            raise DataError(f"{label}: inputs have dtype {t.dtype}; expected floating-point "
                            f"values, int64/int32 ids or a bool mask (normalise raw uint8 "
                            f"images to float first)")
    return x


# uint8 is left out: it is nearly always raw image pixels that were meant to be normalised
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.bool)


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def iter_batches(loader: Iterable[Any], limit_samples: int | None = None
                 ) -> Iterator[tuple[Any, torch.Tensor | None]]:
    """Yield ``(inputs, labels)`` batches, stopping once ``limit_samples`` inputs have been
    yielded; inputs are a tensor, a tuple or a dict of tensors (see :func:`split_batch`)."""
    from .inputs import batch_size, head

    seen = 0
    for batch in loader:
        x, y = split_batch(batch)
        n = batch_size(x)
        if limit_samples is not None:
            room = limit_samples - seen
            if room <= 0:
                return
            if n > room:
                x, y, n = head(x, room), (y[:room] if y is not None else None), room
        seen += n
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
        transform: ``transform(batch) -> model inputs`` (a tensor, a tuple, or a dict of named
            tensors such as ``{"input_ids", "attention_mask"}``), applied to every batch of
            every loader, as NNCF's ``Dataset(source, transform)``.
        labels: ``labels(batch) -> label tensor`` when ``transform`` is given and the batches
            carry labels (else accuracy is not measured).
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
    transform: Any = None
    labels: Any = None

    def __post_init__(self) -> None:
        if self.train is None and self.val is None and self.calib is None \
                and self.example_input is None:
            raise DataError("DataBundle is empty: give at least one of train, val, calib or "
                            "example_input")
        if self.labels is not None and self.transform is None:
            raise DataError("DataBundle(labels=...) needs transform= too (which part of a "
                            "batch the model takes)")
        if self.transform is not None:
            for role in ("train", "val", "calib"):
                loader = getattr(self, role)
                if loader is not None and not isinstance(loader, Transformed):
                    setattr(self, role, Transformed(loader, self.transform, self.labels))
        for role in ("train", "val", "calib"):
            self._check_loader(role)
        if self.calib is None and self.train is not None:
            self.calib = self.train
        if self.example_input is None:
            self.example_input = _head(self._first_input(), 1)
        check_inputs(self.example_input, "DataBundle.example_input")
        if any(t.dim() == 0 for t in _tensors(self.example_input)):
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

    def _first_input(self) -> Any:
        for role in ("val", "calib", "train"):
            loader = getattr(self, role)
            if loader is not None:
                return split_batch(next(iter(loader)))[0]
        raise DataError("DataBundle has no loader to take an example input from")

    # -- access -------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (the first, for a model taking several) without the batch."""
        assert self.example_input is not None
        return tuple(_tensors(self.example_input)[0].shape[1:])

    def require(self, role: str, why: str) -> Iterable[Any]:
        """The loader for ``role`` or a DataError that says which pass needed it."""
        loader = getattr(self, role)
        if loader is None:
            raise DataError(f"{why} needs DataBundle.{role}, which was not given")
        return loader

    def samples(self, role: str = "val", n: int = 64) -> Any:
        """Up to ``n`` real inputs from ``role`` in one batch (for parity checks and latency):
        a tensor, or a tuple/dict of tensors for a model that takes several."""
        from .inputs import cat

        loader = getattr(self, role) or self.calib or self.train
        if loader is None:
            assert self.example_input is not None
            return self.example_input
        xs = [x for x, _ in iter_batches(loader, n)]
        return cat(xs) if xs else self.example_input

    def calibration_inputs(self, n: int) -> Any:
        """``n`` calibration inputs, each checked for NaN/Inf; errors say how many were found."""
        from .inputs import cat

        loader = self.require("calib", "INT8 calibration")
        xs = [check_inputs(x, "calibration data") for x, _ in iter_batches(loader, n)]
        if not xs:
            raise DataError("calibration data is empty: DataBundle.calib yields no samples")
        return cat(xs)

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
                "inputs": {k: list(v.shape[1:]) for k, v in _named(self.example_input).items()},
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


def _tensors(x: Any) -> list[torch.Tensor]:
    from .inputs import tensors
    return tensors(x)


def _named(x: Any) -> dict[str, torch.Tensor]:
    from .inputs import named
    return named(x)


def _head(x: Any, n: int) -> Any:
    from .inputs import apply
    return apply(x, lambda t: t[:n].clone())


def take(loader: Iterable[Any], n_batches: int) -> list[Any]:
    """The first ``n_batches`` batches of a loader."""
    return list(itertools.islice(loader, n_batches))
