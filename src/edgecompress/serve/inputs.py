"""Request bodies → model inputs, with errors that say what was wrong (400 / 413 / 415).

Accepted on ``POST /predict``:

- an image (``multipart/form-data`` field ``file``, or an ``image/*`` body): decoded by Pillow,
  then resized and normalised from the artifact's ``preprocess`` metadata;
- JSON ``{"inputs": [[...]]}``: a nested list shaped like the model's input;
- ``application/x-npy``: a ``.npy`` array (read with ``allow_pickle=False``);
- ``application/octet-stream``: raw little-endian bytes with an ``X-Shape: 1,3,32,32`` header
  (and ``X-Dtype``, default the model's input dtype).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np

from ..errors import InputError
from ..runtime.preprocess import image_to_input
from .verify import LoadedModel

MAX_IMAGE_PIXELS = 40_000_000  # a decompression bomb is refused before it is decoded


class RequestError(Exception):
    """A client error: HTTP ``status`` and a message saying what was wrong and what to send."""

    def __init__(self, status: int, message: str, **detail: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def decode_image(data: bytes, model: LoadedModel) -> np.ndarray:
    """Image bytes → the model's input, or 415 when the bytes are not an image Pillow reads."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(400, "the image upload is empty")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise RequestError(413, f"image of {img.width}x{img.height} pixels exceeds "
                                    f"{MAX_IMAGE_PIXELS:,} pixels; resize it before sending")
        img.load()
    except RequestError:
        raise
    except Exception as exc:  # also a Pillow plugin that fails (another library's patched opener)
        reason = ("unknown file type" if isinstance(exc, UnidentifiedImageError)
                  else f"{type(exc).__name__}: {exc}")
        raise RequestError(415, f"the upload ({len(data):,} bytes) is not an image Pillow can "
                                f"read ({reason}); send PNG, JPEG, BMP, GIF or WebP") from exc
    try:
        return image_to_input(img, model.runner.inputs[0], model.metadata.get("preprocess"))
    except InputError as exc:
        raise RequestError(400, str(exc)) from exc


def decode_json(data: bytes, model: LoadedModel) -> np.ndarray:
    dtype = model.runner.inputs[0].dtype
    try:
        payload = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError(400, 'expected a JSON object {"inputs": [[...]]} holding a nested '
                                'list shaped like the model input', expected=_expected(model))
    try:
        return np.asarray(payload["inputs"], dtype=np.dtype(payload.get("dtype", dtype)))
    except (ValueError, TypeError) as exc:
        raise RequestError(400, f"'inputs' is not a rectangular numeric array: {exc}",
                           expected=_expected(model)) from exc


def decode_npy(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RequestError(400, f"the body is not a .npy array (pickled object arrays are "
                                f"refused): {exc}") from exc


def decode_raw(data: bytes, headers: Any, model: LoadedModel) -> np.ndarray:
    shape_text = headers.get("x-shape")
    if not shape_text:
        raise RequestError(400, "raw tensor bodies need an X-Shape header, e.g. 'X-Shape: "
                                "1,3,32,32'", expected=_expected(model))
    try:
        shape = tuple(int(d) for d in shape_text.split(","))
        dtype = np.dtype(headers.get("x-dtype", model.runner.inputs[0].dtype))
    except (ValueError, TypeError) as exc:
        raise RequestError(400, f"bad X-Shape/X-Dtype header: {exc}") from exc
    expected_bytes = math.prod(shape) * dtype.itemsize
    if len(data) != expected_bytes:
        raise RequestError(400, f"X-Shape {list(shape)} of {dtype} needs {expected_bytes} bytes; "
                                f"the body has {len(data)}")
    arr = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
    # a copy only on big-endian machines: numpy drops the GIL while casting, and getting it
    # back behind busy inference threads cost more than the whole request
    return arr if arr.dtype == dtype else arr.astype(dtype)


def decode_tensor(data: bytes, kind: str, headers: Any, model: LoadedModel) -> np.ndarray:
    """A tensor body of media type ``kind``, checked against the model's input spec (400)."""
    if kind == "application/json":
        arr = decode_json(data, model)
    elif kind == "application/x-npy":
        arr = decode_npy(data)
    else:
        arr = decode_raw(data, headers, model)
    spec = model.runner.inputs[0]
    if arr.dtype != np.dtype(spec.dtype) and arr.dtype.kind in "fiu":
        arr = arr.astype(spec.dtype)  # JSON numbers have no dtype of their own
    try:
        return model.runner.check_input(arr)
    except InputError as exc:
        raise RequestError(400, str(exc), expected=_expected(model)) from exc


def _expected(model: LoadedModel) -> dict[str, Any]:
    return model.runner.inputs[0].to_dict()


TENSOR_TYPES = ("application/json", "application/x-npy", "application/octet-stream")
