"""Object detection on a Raspberry Pi: camera or image folder → detector artifact → boxes drawn.

    python examples/detect_on_pi.py detector.tflite --source camera --seconds 60
    python examples/detect_on_pi.py detector.onnx --source frames/ --out detections.png
    python examples/detect_on_pi.py detector_ncnn --source camera --skip 2   # detect every 3rd frame

It needs only the device install (no torch). ``runner.detect(frame)`` letterboxes the frame,
runs the artifact, decodes its head and applies NMS as the artifact's own metadata says, and
returns boxes in the frame's pixels. Every ``--status-every`` seconds it prints the FPS and the
board's status (CPU temperature, throttling, load) from ``ec.system_status()``. With ``--skip N``
only every (N+1)-th frame is detected and the frames between reuse its boxes — the usual way to
keep a camera loop live when the detector is slower than the camera. The last detected frame,
with its boxes drawn, is written to ``--out`` (PNG).
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
COLOURS = [(255, 56, 56), (56, 255, 56), (56, 130, 255), (255, 210, 40), (255, 60, 255),
           (40, 230, 230)]


def frames_from_folder(folder: Path, loop: bool) -> Iterator[np.ndarray]:
    from PIL import Image

    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    while True:
        for f in files:
            with Image.open(f) as im:
                yield np.asarray(im.convert("RGB"))
        if not loop:
            return


def frames_from_camera(source: str) -> Iterator[np.ndarray]:
    try:
        import cv2
    except ImportError:
        raise SystemExit("camera/video input needs OpenCV: pip install opencv-python-headless") from None
    cap = cv2.VideoCapture(0 if source == "camera" else source)
    if not cap.isOpened():
        raise SystemExit(f"cannot open {source} (no camera here? pass an image folder instead)")
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame[:, :, ::-1].copy()  # BGR → RGB


def draw(frame: np.ndarray, det: dict, names: list[str], caption: str) -> "object":
    """The frame with each detection's box and 'label score' drawn (a Pillow image)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    pen = ImageDraw.Draw(img)
    width = max(2, round(min(img.size) / 160))
    for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
        colour = COLOURS[int(label) % len(COLOURS)]
        x1, y1, x2, y2 = (float(v) for v in box)
        pen.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{names[int(label)] if int(label) < len(names) else int(label)} {score:.2f}"
        tx, ty = x1, max(0.0, y1 - 12)
        pen.rectangle(pen.textbbox((tx, ty), text), fill=colour)
        pen.text((tx, ty), text, fill=(0, 0, 0))
    pen.rectangle(pen.textbbox((4, 4), caption), fill=(0, 0, 0))
    pen.text((4, 4), caption, fill=(255, 255, 255))
    return img


def class_names(runner: ec.Runner) -> list[str]:
    spec = runner.metadata.get("detection") or {}
    return list(spec.get("class_names") or runner.metadata.get("class_names") or [])


def run(artifact: Path, source: str, out: Path, seconds: float, max_frames: int | None,
        skip: int, threads: int | None, status_every: float = 5.0) -> dict:
    runner = ec.load(artifact, threads=threads)
    names = class_names(runner)
    folder = Path(source).is_dir()
    frames = frames_from_folder(Path(source), loop=max_frames is not None) if folder \
        else frames_from_camera(source)
    det, frame, shown = None, None, None
    total = detected = 0
    detect_s = 0.0
    start = t_status = time.monotonic()
    for frame in frames:
        if det is None or total % (skip + 1) == 0:
            t0 = time.perf_counter()
            det = runner.detect(frame)
            detect_s += time.perf_counter() - t0
            shown = frame  # skipped frames reuse these boxes; the PNG shows the frame they fit
            detected += 1
        total += 1
        now = time.monotonic()
        if now - t_status >= status_every:
            print(f"[{total} frames] {total / (now - start):.1f} FPS, {len(det['boxes'])} boxes; "
                  f"{json.dumps(ec.system_status())}")
            t_status = now
        if now - start >= seconds or (max_frames and total >= max_frames):
            break
    if frame is None:
        raise SystemExit(f"{source} gave no frames")
    elapsed = time.monotonic() - start
    status = ec.system_status()
    summary = {"frames": total, "detected_frames": detected, "skip": skip,
               "fps": round(total / elapsed, 2), "detect_ms": round(1000 * detect_s / detected, 1),
               "boxes_last_frame": len(det["boxes"]), "cpu_temperature_c":
               status.get("cpu_temperature_c"), "system": status, "png": str(out)}
    temp = summary["cpu_temperature_c"]
    caption = (f"{Path(artifact).name}: {summary['fps']} FPS, {summary['detect_ms']} ms/detect, "
               f"CPU {'n/a (no sensor)' if temp is None else f'{temp:.1f} C'}")
    draw(shown, det, names, caption).save(out)
    print(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path, help="a detector artifact (.onnx, .tflite, ncnn folder)")
    ap.add_argument("--source", default="camera", help="'camera', a video file or an image folder")
    ap.add_argument("--out", type=Path, default=Path("detections.png"), help="PNG of the last frame")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-frames", type=int, default=None,
                    help="stop after this many frames (an image folder is looped to reach it)")
    ap.add_argument("--skip", type=int, default=0, help="frames between two detections")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--status-every", type=float, default=5.0)
    args = ap.parse_args(argv)
    if args.skip < 0:
        ap.error("--skip must be >= 0")
    return run(args.artifact, args.source, args.out, args.seconds, args.max_frames, args.skip,
               args.threads, args.status_every)


if __name__ == "__main__":
    main()
