"""Options are declared once: validation, recipes and schema all come from the declaration."""

from dataclasses import dataclass

import pytest

import edgecompress as ec
from edgecompress.options import from_options, option, options_schema


@dataclass
class Toy(ec.Pass):
    name = "toy"
    ratio: float = option(0.5, "A fraction.", low=0, high=1, low_open=True, high_open=True)
    mode: str = option("a", "A mode.", choices=("a", "b"))
    layers: tuple[str, ...] = option((), "Layer names.")
    count: int | None = option(None, "A count.", low=1)

    def run(self, model, ctx):
        return model


def test_valid_options_construct():
    t = Toy(ratio=0.3, mode="b", layers=("fc",), count=2)
    assert (t.ratio, t.mode, t.layers, t.count) == (0.3, "b", ("fc",), 2)


@pytest.mark.parametrize("kwargs, words", [
    ({"ratio": 0.0}, ["ratio", "(0, 1)"]),
    ({"ratio": 1.5}, ["ratio", "outside"]),
    ({"ratio": "half"}, ["ratio", "expected float"]),
    ({"mode": "c"}, ["mode", "'c' is not one of 'a', 'b'"]),
    ({"count": 0}, ["count", "outside"]),
    ({"layers": "fc"}, ["layers", "expected tuple"]),
])
def test_bad_values_are_rejected_at_construction_with_the_option_named(kwargs, words):
    with pytest.raises(ec.ConfigError) as err:
        Toy(**kwargs)
    for w in words:
        assert w in str(err.value)


def test_recipe_round_trip_and_unknown_key():
    t = Toy(ratio=0.25, layers=("a", "b"))
    assert t.to_recipe() == {"pass": "toy", "ratio": 0.25, "mode": "a", "layers": ["a", "b"],
                             "count": None}
    again = Toy.from_recipe({k: v for k, v in t.to_recipe().items() if k != "pass"})
    assert again == t
    with pytest.raises(ec.ConfigError, match="unknown option 'ratoi'.*Allowed options: count, layers, mode, ratio"):
        from_options(Toy, {"ratoi": 0.1})


def test_schema_comes_from_the_same_declaration():
    schema = options_schema(Toy)
    assert schema["ratio"]["range"] == "(0, 1)"
    assert schema["mode"]["choices"] == ["a", "b"]
    assert schema["ratio"]["doc"] == "A fraction."
    assert schema["count"]["type"] == "int | None"
