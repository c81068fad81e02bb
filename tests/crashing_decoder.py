"""A decoder that crashes its process (SIGSEGV) on one video: stands in for a decoder bug.

Importable by prepare's spawned workers (they inherit the test's module path)."""
import os
import signal
from pathlib import Path

from flowaction.data.decode import decode_gray


def decode_or_crash(path, size, method, threads=False):
    if Path(path).name == "jump1.avi":
        os.kill(os.getpid(), signal.SIGSEGV)
    return decode_gray(path, size, method, threads)
