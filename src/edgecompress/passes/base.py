"""The Pass base class (the context a pass runs in is :class:`edgecompress.context.PassContext`)."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import TYPE_CHECKING, Any, ClassVar

from ..context import PassContext, StageOutput
from ..forms import Form
from ..options import from_options, options_dict, options_schema, validate_options

if TYPE_CHECKING:
    from ..data.bundle import DataBundle

log = logging.getLogger("edgecompress")


class Pass:
    """Base class of every compression pass.

    A subclass is a ``@dataclass`` whose fields are declared with :func:`edgecompress.options.option`
    (validated at construction), sets ``name``, ``accepts`` and ``produces`` and implements
    :meth:`run`. Register it in :mod:`edgecompress.passes` (or through the
    ``edgecompress.passes`` entry-point group) and it works in recipes too.
    """

    name: ClassVar[str] = "pass"
    accepts: ClassVar[tuple[Form, ...]] = (Form.TORCH_FLOAT,)
    produces: ClassVar[Form | None] = None  # None: gives the form it was given
    folds_batchnorm: ClassVar[bool] = False  # True: BatchNorm layers are gone after this pass

    def __post_init__(self) -> None:
        validate_options(self)
        self.validate()

    # -- hooks a subclass may override ------------------------------------------------------
    def validate(self) -> None:
        """Cross-option checks (raise ConfigError). Called at construction."""

    def output_form(self, form: Form) -> Form:
        """The form this pass gives when given ``form``."""
        return self.produces or form

    def trains_float_model(self) -> bool:
        """True when this pass trains the float model it is given (e.g. recovery fine-tuning).

        The pipeline warns when such a pass follows one that folds BatchNorm away: training
        a BN-folded network is much less stable, so recovery then reaches far lower accuracy.
        """
        return getattr(self, "finetune", None) is not None

    def check_data(self, data: "DataBundle") -> None:
        """Raise DataError before anything runs when ``data`` lacks what this pass needs."""

    def run(self, model: Any, ctx: PassContext) -> StageOutput:  # pragma: no cover - abstract
        """Compress ``model`` (a copy the pass may change); return it in a StageOutput.

        A plain model may be returned instead (plugins written before StageOutput)."""
        raise NotImplementedError(f"{type(self).__name__}.run is not implemented")

    # -- recipes ------------------------------------------------------------------------------
    def to_recipe(self) -> dict[str, Any]:
        """This pass as plain data: ``{"pass": name, **options}``."""
        return {"pass": self.name, **options_dict(self)}

    @classmethod
    def from_recipe(cls, options: dict[str, Any], where: str = "") -> "Pass":
        """The pass from recipe options, validated like the constructor."""
        return from_options(cls, options, where or f"pass '{cls.name}'")

    @classmethod
    def schema(cls) -> dict[str, dict[str, Any]]:
        """Option name → type, default, doc, choices and range (docs, recipes)."""
        return options_schema(cls)

    def replace(self, **changes: Any) -> "Pass":
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def describe(self) -> str:
        """``name(option=value, ...)`` for logs."""
        opts = ", ".join(f"{k}={v!r}" for k, v in options_dict(self, recipe_only=False).items()
                         if not _is_heavy(v))
        return f"{self.name}({opts})"

    def __deepcopy__(self, memo: dict[int, Any]) -> "Pass":
        return copy.copy(self)


def _is_heavy(value: Any) -> bool:
    try:
        import torch
        return isinstance(value, torch.nn.Module)
    except ImportError:  # pragma: no cover
        return False


__all__ = ["Pass", "PassContext", "StageOutput"]
