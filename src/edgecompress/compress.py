"""``edgecompress compress``: run a recipe on a model and export it (filled in by issue 7)."""

from __future__ import annotations

import argparse


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="'module:function' returning the model, or a saved .ecm")
    parser.add_argument("--recipe", required=True, help="recipe file (.yaml or .json)")
    parser.add_argument("--out", default="edgecompress-out", help="output folder")


def compress_from_args(args: argparse.Namespace) -> int:
    raise NotImplementedError("compress is not implemented yet")
