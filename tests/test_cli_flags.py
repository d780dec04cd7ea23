"""The CLI has the API's reach: flags derived from the option declarations build the recipe."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import fastjsonschema
import pytest
import yaml

import edgecompress as ec
from edgecompress.cli import build_parser, main
from edgecompress.options import options_schema
from edgecompress.recipe_schema import recipe_schema

ROOT = Path(__file__).resolve().parent.parent


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"edgecompress {ec.__version__}"


def test_targets_lists_every_profile(capsys):
    assert main(["targets"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ec.targets.TARGETS)
    assert main(["targets", "--json"]) == 0
    assert {t["name"] for t in json.loads(capsys.readouterr().out)} == set(ec.targets.TARGETS)


@pytest.mark.parametrize("command", ["demo", "bench", "info", "formats", "compress", "targets",
                                     "schema"])
def test_every_option_has_help_and_shows_its_default(command):
    for action in _subparser(command)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, action.option_strings or action.dest
        takes_value = action.nargs != 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if action.option_strings and takes_value and action.default is not None:
            assert "default" in action.help, (command, action.option_strings, action.help)


def test_pass_flags_are_derived_from_the_option_declarations():
    flags = {s: a for a in _subparser("compress")._actions for s in a.option_strings}
    for prefix, cls in (("qat", ec.passes.QuantizeQAT), ("int8", ec.passes.QuantizePTQ),
                        ("prune", ec.passes.StructuredPrune)):
        for name, spec in options_schema(cls).items():
            flag = f"--{prefix}-{name.replace('_', '-')}"
            if name in ("finetune", "ratio"):  # nested recovery: --prune-recover-*; --prune X
                continue
            assert flag in flags, flag
            assert spec["doc"].rstrip(".") in flags[flag].help.replace("%%", "%")
            assert f"default: {spec['default'] if not isinstance(spec['default'], tuple) else ''}" \
                in flags[flag].help or isinstance(spec["default"], tuple)
    assert "--allow-float-fallback" in flags and "--onnx-opset" in flags and "--tflite-int8-io" in flags


@pytest.mark.parametrize("argv, words", [
    (["--prune", "1.5"], "option 'ratio' is invalid: 1.5 is outside the allowed range (0, 1)"),
    (["--int8", "--int8-method", "median"], "'median' is not one of"),
    (["--recipe", "r.yaml", "--prune", "0.3"], "either --recipe FILE or pass flags"),
    ([], "nothing to do"),
    (["--prune-recover-epochs", "1"], "need structured pruning"),
    (["--int8", "--tflite-int8-io"], "--export does not include tflite"),
])
def test_bad_flags_fail_before_any_work(argv, words, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["compress", "--model", "edgecompress.models:small_cnn", "--out", str(out), *argv])
    assert code == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_cli_leaves_the_root_logger_alone(capsys):
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    assert main(["formats"]) == 0
    assert (list(root.handlers), root.level) == before


def test_published_schema_is_the_generated_one():
    assert json.loads((ROOT / "docs/recipe.schema.json").read_text()) == recipe_schema()


def _recipes() -> list[tuple[str, dict]]:
    found = [(p.name, yaml.safe_load(p.read_text())) for p in sorted((ROOT / "examples/recipes").glob("*.yaml"))]
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = page.read_text()
        for i, block in enumerate(text.split("```yaml")[1:]):
            found.append((f"{page.name}#{i}", yaml.safe_load(block.split("```")[0])))
    return found


def test_bundled_recipes_validate_against_the_schema():
    validate = fastjsonschema.compile(recipe_schema())
    recipes = _recipes()
    assert len(recipes) >= 4
    for name, recipe in recipes:
        validate(recipe)
        assert ec.Pipeline.from_recipe(recipe).passes, name  # and the library agrees


@pytest.mark.parametrize("bad", [
    {"passes": [{"pass": "structured_prune", "ratio": 1.5}]},
    {"passes": [{"pass": "fuse", "bogus": 1}]},
    {"passes": [{"pass": "quantize_ptq", "method": "median"}]},
    {"passes": [{"pass": "structured_prune", "finetune": {"kind": "finetune", "temperature": 2}}]},
    {"passes": []},
])
def test_schema_rejects_what_the_library_rejects(bad):
    with pytest.raises(fastjsonschema.JsonSchemaException):
        fastjsonschema.compile(recipe_schema())(bad)
    with pytest.raises(ec.ConfigError):
        ec.Pipeline.from_recipe(bad)


def test_compress_from_flags_quiet_and_recipe_saved(tmp_path):
    """The issue's command line, without a recipe file; stderr stays free of runtime noise and
    progress bars when it is not a terminal."""
    env = {k: v for k, v in os.environ.items() if k != "EDGECOMPRESS_PROGRESS"}
    cmd = [sys.executable, "-m", "edgecompress", "compress", "--model",
           "edgecompress.models:small_cnn", "--image-size", "16", "--prune", "0.3",
           "--prune-recover-epochs", "1", "--prune-recover-max-batches", "2", "--int8",
           "--int8-samples", "32", "--export", "onnx,tflite,ncnn", "--allow-float-fallback",
           "--target", "rpi5", "--out", "out", "--save-recipe", "flags.yaml",
           "--benchmark-runs", "2", "--measure-latency-runs", "2", "--threads", "1",
           # the untrained CNN's near-tied logits can miss the 98 % top-1 bound of INT8 (95.7 %
           # measured at max|diff| 0.002): keep, marked, what this test checks the flags of
           "--on-parity-fail", "keep"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["input", "structured_prune", "quantize_ptq"]
    precisions = {a["format"]: a["precision"] for a in report["artifacts"]}
    assert precisions == {"onnx": "int8-static", "tflite": "int8-static", "ncnn": "fp32"}
    assert "float_fallback" in next(a for a in report["artifacts"] if a["format"] == "ncnn")["notes"]
    recipe = yaml.safe_load((tmp_path / "flags.yaml").read_text())
    assert [p["pass"] for p in recipe["passes"]] == ["structured_prune", "quantize_ptq"]
    assert recipe["passes"][0]["ratio"] == 0.3 and recipe["passes"][0]["finetune"]["epochs"] == 1
    assert recipe["passes"][1]["samples"] == 32
    assert ec.Pipeline.from_recipe(tmp_path / "flags.yaml").passes[1].samples == 32
    for noise in ("INFO root", "jax", "absl", "I0000", "_pytree", "oneDNN", "\r"):
        assert noise not in proc.stderr, (noise, proc.stderr[-2000:])
    assert "INFO edgecompress: exported onnx int8-static" in proc.stderr
