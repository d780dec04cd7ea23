"""Every option's doc (the source of the generated docs, CLI help and recipes) is a whole sentence."""

import re

import pytest

import edgecompress as ec
from edgecompress import registry
from edgecompress.options import options_schema
from edgecompress.stages import Measure
from edgecompress.training import TrainConfig


def _documented() -> list[tuple[str, type]]:
    out = [(f"pass {n}", registry.passes.get_object(n)) for n in registry.passes]
    out += [("TrainConfig", TrainConfig), ("Measure", Measure), ("FineTune", ec.FineTune)]
    for name, spec in registry.formats.items():
        if spec.exporter and spec.available():
            out.append((f"export {name}", registry.load_object(spec.exporter).Options))
    return out


def _incomplete(doc: str) -> str | None:
    if not doc:
        return "empty"
    if "noqa" in doc or "#" in doc:
        return "holds a comment marker (a swallowed line?)"
    if not re.match(r"[A-Z0-9'\"(`]", doc):
        return "does not start a sentence"
    if not doc.endswith((".", ".)", "?")):
        return "does not end with a full stop"
    if doc.count("(") != doc.count(")"):
        return "has unbalanced parentheses"
    return None


@pytest.mark.parametrize("where,cls", _documented(), ids=lambda v: v if isinstance(v, str) else "")
def test_option_docs_are_complete_sentences(where, cls):
    bad = {k: (v["doc"], why) for k, v in options_schema(cls).items()
           if (why := _incomplete(v.get("doc", "")))}
    assert not bad, f"{where}: {bad}"


def test_checker_catches_the_truncated_finetune_doc():
    assert _incomplete("Recovery with the masks applied: after each ") is not None
    assert _incomplete("Recovery after each pruning step (ec.FineTune(...) or a distillation "
                       "recovery).") is None
