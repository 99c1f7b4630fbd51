"""Give freed image memory back to the operating system (glibc's malloc), once per process.

A decoded 6300×6300 RGBA bitmap is 159 MB, allocated by Pillow in 16 MB blocks. glibc raises its
mmap threshold to the size of the largest block freed (up to 32 MB), so after the first large image
every later block comes from a heap arena, and a heap arena keeps what it had: RSS stayed at its
peak long after the images were gone. Pinning the thresholds (which also turns the sliding
adjustment off) keeps every block of 1 MiB or more in its own mapping, returned on free. It costs
one mmap/munmap pair per large allocation, which is nothing beside decoding a large image.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 32 << 20

_done = False


def tune_allocator() -> bool:
    """Pin glibc's mmap and trim thresholds (see the module doc); False where there is no glibc."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done
