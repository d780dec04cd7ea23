"""MkDocs hooks: tables generated from the code, so the docs cannot drift from it.

- ``<!-- options: NAME -->`` → the option table of pass NAME, from its single declaration.
- ``<!-- formats-table -->`` → the format table (edgecompress.formats.FORMATS).
- ``<!-- targets-table -->`` → the device profiles (edgecompress.targets.TARGETS).
- ``<!-- include: PATH -->`` → the contents of a file from the repository (benchmark results).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _options_table(name: str) -> str:
    from edgecompress.passes import get_pass

    schema = get_pass(name).schema()
    rows = ["| option | type | default | allowed | description |", "|---|---|---|---|---|"]
    for opt, s in schema.items():
        allowed = ", ".join(repr(c) for c in s.get("choices", [])) or s.get("range", "")
        if not s["recipe"]:
            allowed = (allowed + " (Python only)").strip()
        default = s["default"]
        default = type(default).__name__ if hasattr(default, "recover") else repr(default)
        rows.append(f"| `{opt}` | `{s['type']}` | `{default}` | {allowed} | {s['doc']} |")
    return "\n".join(rows)


def _formats_table() -> str:
    from edgecompress.formats import FORMATS

    rows = ["| format | file | extra | FP16 | INT8 static | INT8 dynamic | dynamic batch | what |",
            "|---|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "—"}
    for s in FORMATS.values():
        file = "folder" if s.directory else " / ".join(s.suffixes)
        rows.append(f"| `{s.name}` | {file} | {s.extra or 'core'} | {yes[s.fp16]} | "
                    f"{yes[s.int8_static]} | {yes[s.int8_dynamic]} | {yes[s.dynamic_batch]} | "
                    f"{s.description} |")
    return "\n".join(rows)


def _targets_table() -> str:
    from edgecompress.targets import TARGETS

    rows = ["| target | device | formats | threads | INT8 engine | ONNX opset | round_to | other |",
            "|---|---|---|---|---|---|---|---|"]
    for t in TARGETS.values():
        other = []
        if t.tflite_full_integer:
            other.append("full-integer TFLite")
        if t.tensorrt_fp16:
            other.append("TensorRT FP16" + (" + INT8" if t.tensorrt_int8 else ""))
        rows.append(f"| `{t.name}` | {t.description} | {', '.join(t.formats)} | {t.threads} | "
                    f"{t.quant_backend} / {t.torchscript_engine} | {t.onnx_opset} | "
                    f"{t.round_to} | {', '.join(other) or '—'} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs) -> str:
    markdown = re.sub(r"<!-- options: (\w+) -->", lambda m: _options_table(m.group(1)), markdown)
    markdown = markdown.replace("<!-- formats-table -->", _formats_table())
    markdown = markdown.replace("<!-- targets-table -->", _targets_table())

    def include(m: re.Match[str]) -> str:
        path = ROOT / m.group(1).strip()
        return path.read_text() if path.exists() else f"*({m.group(1)} has not been produced yet)*"

    return re.sub(r"<!-- include: (.+?) -->", include, markdown)
