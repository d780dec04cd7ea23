"""MkDocs hooks: tables generated from the code, so the docs cannot drift from it.

- ``<!-- options: NAME -->`` → the option table of pass NAME, from its single declaration.
- ``<!-- formats-table -->`` → the format table (edgecompress.formats.FORMATS).
- ``<!-- targets-table -->`` → the device profiles (edgecompress.targets.TARGETS).
- ``<!-- include: PATH -->`` → the contents of a file from the repository (benchmark results);
  a results table ``X.md`` is followed by its plot ``X.png`` when the benchmark drew one.
- ``<!-- benchmark-plots -->`` → every other plot in ``benchmarks/results/``.
- Sphinx roles left in docstrings (``:meth:`x```) are shown as plain code on the API page.

The plots are added to the site as ``results/NAME.png`` (see :func:`on_files`).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
_embedded: set[str] = set()


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


def _include(m: re.Match[str]) -> str:
    rel = m.group(1).strip()
    path = ROOT / rel
    if not path.exists():
        return f"*({rel} has not been produced yet)*"
    # older results files wrote the max|diff| header unescaped, which ends a table cell
    text = _demoted(path.read_text().replace("max|diff|", "max\\|diff\\|"))
    plot = path.with_suffix(".png")
    if path.parent == RESULTS and plot.exists():
        _embedded.add(plot.name)
        text += f"\n\n![{plot.stem}: measured size, accuracy and latency per stage](results/{plot.name})\n"
    return text


def _demoted(text: str, top: int = 3) -> str:
    """Headings of an included file nest under the page's ``##`` section: its highest heading
    becomes ``###`` (a results file's ``# Title`` would otherwise end the page's contents)."""
    lines, fenced, heads = text.splitlines(), False, []
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            heads.append(i)
    if not heads:
        return text
    by = max(0, top - min(len(lines[i]) - len(lines[i].lstrip("#")) for i in heads))
    for i in heads:
        lines[i] = "#" * by + lines[i]
    return "\n".join(lines)


def _all_plots() -> str:
    rest = [p for p in sorted(RESULTS.glob("*.png")) if p.name not in _embedded]
    return "\n\n".join(f"**{p.stem}** (`benchmarks/results/{p.stem}.md`)\n\n"
                         f"![{p.stem}](results/{p.name})" for p in rest)


def on_page_markdown(markdown: str, **kwargs) -> str:
    markdown = re.sub(r"<!-- options: (\w+) -->", lambda m: _options_table(m.group(1)), markdown)
    markdown = markdown.replace("<!-- formats-table -->", _formats_table())
    markdown = markdown.replace("<!-- targets-table -->", _targets_table())
    markdown = re.sub(r"<!-- include: (.+?) -->", _include, markdown)
    return markdown.replace("<!-- benchmark-plots -->", _all_plots())


def on_page_content(html: str, **kwargs) -> str:
    """Sphinx cross-reference roles mean nothing to Markdown: show ``:meth:`x``` as ``x``."""
    html = re.sub(r":(?:meth|func|class|mod|attr|data|exc|obj):(<code[^>]*>)~?", r"\1", html)
    return html


def on_files(files, config):
    """Put the benchmark plots into the site as results/NAME.png, beside benchmarks.md."""
    from mkdocs.structure.files import File

    for png in sorted(RESULTS.glob("*.png")):
        files.append(File(f"results/{png.name}", src_dir=str(RESULTS.parent),
                          dest_dir=config["site_dir"], use_directory_urls=config["use_directory_urls"]))
    return files
