"""Run an artifact on a camera, a video or a folder of images within a frame budget (Raspberry Pi).

    python examples/rpi_camera_loop.py model.tflite --source camera --budget-ms 50
    python examples/rpi_camera_loop.py model.onnx --source frames/ --seconds 30

It benchmarks the artifact first (latency percentiles and the board's status: CPU temperature,
throttling, load, memory), then classifies frames, counting how many met the frame budget and
printing the system status every few seconds. Preprocessing (size, mean/std, layout) and class
names come from the artifact's own metadata.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np

import edgecompress as ec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def frames_from_folder(folder: Path) -> Iterator[np.ndarray]:
    from PIL import Image

    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images in {folder}")
    while True:
        for f in files:
            yield np.asarray(Image.open(f).convert("RGB"))


def frames_from_cv2(source: str) -> Iterator[np.ndarray]:
    try:
        import cv2
    except ImportError:
        raise SystemExit("camera/video input needs OpenCV: pip install opencv-python-headless") from None
    cap = cv2.VideoCapture(0 if source == "camera" else source)
    if not cap.isOpened():
        raise SystemExit(f"cannot open {source}")
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame[:, :, ::-1]  # BGR → RGB


def preprocess(frame: np.ndarray, runner: ec.Runner) -> np.ndarray:
    """Resize, scale and normalise a HWC uint8 frame the way the artifact's metadata says."""
    from PIL import Image

    shape = runner.inputs[0].shape
    meta = runner.metadata.get("preprocess") or {}
    layout = meta.get("layout", "NCHW")
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    img = Image.fromarray(frame).convert("L" if c == 1 else "RGB").resize((w, h))
    x = np.asarray(img, dtype=np.float32).reshape(h, w, c) * float(meta.get("scale", 1 / 255))
    mean, std = meta.get("mean") or [0.0] * c, meta.get("std") or [1.0] * c
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    x = x.transpose(2, 0, 1) if layout == "NCHW" else x
    return x[None].astype(runner.inputs[0].dtype)


def run(artifact: Path, source: str, budget_ms: float, seconds: float, max_frames: int | None,
        threads: int | None, status_every: float = 5.0) -> dict:
    runner = ec.load(artifact, threads=threads)
    stats = runner.benchmark(warmup=5, runs=30)
    print(f"benchmark: {stats}")
    print(f"system: {json.dumps(stats.system)}")
    names = runner.metadata.get("class_names")
    frames = frames_from_folder(Path(source)) if Path(source).is_dir() else frames_from_cv2(source)
    met = total = 0
    t_end, t_status = time.monotonic() + seconds, time.monotonic() + status_every
    for frame in frames:
        t0 = time.perf_counter()
        label = int(np.argmax(runner(preprocess(frame, runner))))
        ms = (time.perf_counter() - t0) * 1000
        total += 1
        met += ms <= budget_ms
        if time.monotonic() >= t_status:
            print(f"[{total} frames] last: {names[label] if names else label} in {ms:.1f} ms; "
                  f"{100 * met / total:.1f}% within {budget_ms} ms; {json.dumps(ec.system_status())}")
            t_status += status_every
        if time.monotonic() >= t_end or (max_frames and total >= max_frames):
            break
    summary = {"frames": total, "within_budget": met, "budget_ms": budget_ms,
               "p50_ms": stats.p50_ms, "system": ec.system_status()}
    print(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--source", default="camera", help="'camera', a video file or an image folder")
    ap.add_argument("--budget-ms", type=float, default=33.3, help="frame budget (33 ms = 30 FPS)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args(argv)
    return run(args.artifact, args.source, args.budget_ms, args.seconds, args.max_frames, args.threads)


if __name__ == "__main__":
    main()
