"""Subprocess that converts a Keras / TensorFlow model to ONNX with tf2onnx.

Run by :func:`edgecompress.convert.keras_in.from_keras` as
``python -m edgecompress.convert._tf_worker SOURCE WORKDIR --opset N``; it is never imported by
the library, so TensorFlow's native libraries are loaded only in this child process. It writes
``WORKDIR/model.onnx``, ``WORKDIR/reference_<i>.npy`` (the Keras/TF outputs on
``WORKDIR/input_<i>.npy``, when given) and ``WORKDIR/meta.json`` (input names, shapes, source
kind). Errors go to stderr as one line starting with ``CONVERT-ERROR:`` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's banner would drown the real errors


def _fail(message: str) -> None:
    sys.stderr.write(f"CONVERT-ERROR: {message}\n")
    sys.exit(2)


def _load_keras(source: Path) -> Any:
    import keras

    try:  # safe_mode (Keras' default for .keras) refuses Lambda layers holding Python bytecode
        return keras.saving.load_model(str(source), compile=False, safe_mode=True)
    except TypeError:  # legacy .h5 loaders take no safe_mode
        return keras.saving.load_model(str(source), compile=False)


def _keras_function(model: Any) -> tuple[Any, list[Any], list[str]]:
    import tensorflow as tf

    specs = [tf.TensorSpec((None, *inp.shape[1:]), inp.dtype, name=_clean(inp.name))
             for inp in model.inputs]

    @tf.function(input_signature=specs)
    def fn(*xs: Any) -> Any:
        return model(list(xs) if len(xs) > 1 else xs[0], training=False)

    return fn, specs, [s.name for s in specs]


def _saved_model_function(source: Path) -> tuple[Any, list[Any], list[str]]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(source))
    if "serving_default" not in loaded.signatures:
        _fail(f"{source} has no 'serving_default' signature (found: "
              f"{', '.join(loaded.signatures) or 'none'}); export it with model.export(path) "
              f"or tf.saved_model.save(model, path, signatures=...)")
    sig = loaded.signatures["serving_default"]
    named = sig.structured_input_signature[1]
    names = sorted(named)
    specs = [tf.TensorSpec(named[n].shape, named[n].dtype, name=n) for n in names]

    @tf.function(input_signature=specs)
    def fn(*xs: Any) -> Any:
        out = sig(**dict(zip(names, xs)))
        return [out[k] for k in sorted(out)]

    fn._edgecompress_keep = loaded  # the function needs the loaded object alive
    return fn, specs, names


def _clean(name: str) -> str:
    return name.split(":")[0].replace("/", "_")


def _outputs(fn: Any, inputs: list[Any]) -> list[Any]:
    import numpy as np

    out = fn(*inputs)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o) for o in out]


def _inputs(workdir: Path, specs: list[Any]) -> list[Any]:
    """The parent's samples, or (when it gave none) two seeded random ones per input, unknown
    sizes set to 32; written back so the parent compares on the same values."""
    import numpy as np

    given = [workdir / f"input_{i}.npy" for i in range(len(specs))]
    if all(p.exists() for p in given):
        return [np.load(p) for p in given]
    rng = np.random.default_rng(0)
    inputs = []
    for p, spec in zip(given, specs):
        shape = [2] + [d if d is not None else 32 for d in spec.shape.as_list()[1:]]
        x = rng.standard_normal(shape).astype(spec.dtype.as_numpy_dtype)
        np.save(p, x)
        inputs.append(x)
    return inputs


def _captured_constants(fn: Any, specs: list[Any]) -> dict[str, Any]:
    """The constant tensors the traced function captured (not variables), by graph name.

    tf2onnx turns such captures into extra graph *inputs* (measured: keras.applications
    EfficientNetB0's Normalization mean and variance came out as two more inputs), so their
    values are put back into the ONNX file as initializers (:func:`_inline_constants`)."""
    import numpy as np
    import tensorflow as tf

    graph = fn.get_concrete_function(*specs).graph
    return {inner.name: np.asarray(outer) for outer, inner in
            zip(graph.external_captures, graph.internal_captures)
            if inner.dtype != tf.resource and hasattr(outer, "numpy")}


def _inline_constants(path: Path, constants: dict[str, Any]) -> list[str]:
    """Turn graph inputs named in ``constants`` into initializers holding their values."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    extra = [i for i in proto.graph.input if i.name in constants]
    for value in extra:
        proto.graph.input.remove(value)
        proto.graph.initializer.append(numpy_helper.from_array(constants[value.name], value.name))
    if extra:
        onnx.save(proto, str(path))
    return [v.name for v in extra]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()
    import numpy as np

    try:
        import tensorflow  # noqa: F401
        import tf2onnx
    except ImportError as exc:
        _fail(f"converting a Keras/TensorFlow model needs tensorflow and tf2onnx ({exc}); "
              f"install them with: pip install 'edgecompress[tf]'")
    src = args.source
    is_saved_model = src.is_dir() and (src / "saved_model.pb").exists()
    try:
        fn, specs, names = (_saved_model_function(src) if is_saved_model
                            else _keras_function(_load_keras(src)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent with its message
        _fail(f"could not load {src} with Keras/TensorFlow: {type(exc).__name__}: {exc}")
    inputs = _inputs(args.workdir, specs)
    for i, ref in enumerate(_outputs(fn, inputs)):
        np.save(args.workdir / f"reference_{i}.npy", ref)
    onnx_path = args.workdir / "model.onnx"
    try:
        tf2onnx.convert.from_function(fn, input_signature=specs, opset=args.opset,
                                      output_path=str(onnx_path))
    except Exception as exc:  # noqa: BLE001
        _fail(f"tf2onnx could not convert {src}: {type(exc).__name__}: {exc}")
    inlined = _inline_constants(onnx_path, _captured_constants(fn, specs))
    meta = {"kind": "saved_model" if is_saved_model else "keras", "inputs": names,
            "captured_constants_inlined": inlined,
            "shapes": [[d if d is not None else None for d in s.shape.as_list()] for s in specs],
            "tensorflow": tensorflow.__version__, "tf2onnx": tf2onnx.__version__}
    (args.workdir / "meta.json").write_text(json.dumps(meta))


if __name__ == "__main__":
    main()
