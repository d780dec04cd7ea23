"""A full disk or a read-only folder: a clear WriteError naming the path, nothing left behind,
and the process lives on. Uses a real 2 MB tmpfs (needs root and mount; skipped otherwise)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgecompress._io import atomic_write_bytes
from edgecompress.errors import WriteError
from edgecompress.formats import get_format

FORMATS = {"onnx": "m.onnx", "tflite": "m.tflite", "torchscript": "m.ptl", "ncnn": "m_ncnn",
           "torch": "m.ecm"}


def _mount(folder: Path, options: str) -> None:
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to create a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MB tmpfs filled up to its last 64 KB."""
    folder = tmp_path / "disk"
    _mount(folder, "size=2M")
    free = shutil.disk_usage(folder).free
    (folder / "filler").write_bytes(bytes(free - (64 << 10)))
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture()
def read_only(tmp_path):
    folder = tmp_path / "ro"
    _mount(folder, "size=1M,ro")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_full_disk_export_is_a_clear_error(tiny_dm, small_disk, fmt):
    if not get_format(fmt).available():
        pytest.skip(f"{fmt} is not installed here")
    dest = small_disk / FORMATS[fmt]
    with pytest.raises(WriteError, match="free space") as err:
        tiny_dm.export(fmt, dest, benchmark_runs=0, parity_samples=8)
    assert str(small_disk) in str(err.value)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_full_disk_save_is_a_clear_error(tiny_dm, small_disk):
    with pytest.raises(WriteError, match="free space"):
        tiny_dm.save(small_disk / "m.ecm")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_write_that_runs_out_of_space_leaves_nothing(small_disk):
    """Past the free-space check, ENOSPC itself becomes a WriteError and the temporary goes."""
    with pytest.raises(WriteError, match="no space left on the device holding"):
        atomic_write_bytes(small_disk / "big.bin", bytes(1 << 20))
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
def test_read_only_folder_is_a_clear_error(tiny_dm, read_only, fmt):
    dest = read_only / FORMATS[fmt]
    with pytest.raises(WriteError, match="read-only file system") as err:
        tiny_dm.export(fmt, dest, benchmark_runs=0, parity_samples=8)
    assert str(dest) in str(err.value) and list(read_only.iterdir()) == []
