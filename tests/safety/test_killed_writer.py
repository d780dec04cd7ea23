"""A writer killed with SIGKILL (no handler runs) leaves a hidden temporary; the next write to the
same destination removes it, and never touches the temporary of a writer that is still alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgecompress._io import atomic_write_bytes

KILLED_WRITER = """
import os, signal, sys
from edgecompress._io import atomic_path
with atomic_path(sys.argv[1], overwrite=True) as tmp:
    tmp.write_bytes(b"half of a model")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _temporaries(dest: Path) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}.*.ec-tmp"))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"the user's previous artifact")
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(dest)], env=dict(os.environ))
    assert proc.returncode == -signal.SIGKILL
    assert dest.read_bytes() == b"the user's previous artifact"  # the kill changed nothing
    assert len(_temporaries(dest)) == 1  # what SIGKILL leaves behind ...
    atomic_write_bytes(dest, b"new artifact")
    assert dest.read_bytes() == b"new artifact"
    assert _temporaries(dest) == []  # ... is gone after the next write


def test_temporary_of_a_live_writer_is_kept(tmp_path):
    dest = tmp_path / "model.onnx"
    live = tmp_path / f".{dest.name}.{os.getpid()}.abc.ec-tmp"  # this process is alive
    live.mkdir()
    atomic_write_bytes(dest, b"x")
    assert live.exists()
