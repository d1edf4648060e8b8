"""glibc's mmap threshold raised at start, so that 256 KiB read buffers come from the heap.

asyncio reads the socket of every protocol that is not a buffered one with ``recv(256 KiB)``
(through TLS, ``SSLObject.read(256 KiB)``): aiohttp's HTTP and WebSocket reader, so the input of
every WebSocket session. Our runtimes read FIFOs and engine sockets 256 KiB at a time too. A
read that comes back short keeps what arrived and frees the rest. glibc serves an allocation
above its mmap threshold (128 KiB at start) with a fresh ``mmap``: every page the read touches
is a page fault, and the free unmaps it again. glibc raises the threshold by itself when it
frees a block larger than the threshold (mallopt(3), M_MMAP_THRESHOLD), which a short read
never is. So a process paid a page fault per 4 KiB of input, or not, by accident: in ours the
threshold happened to be raised while some imports ran, and importing the same modules in
another order left it alone. By hand, 1 GiB of 32 KiB WebSocket messages over TLS into a
process that had not raised it took 2.0-2.7 CPU-seconds, 0.8-1.3 of them in the kernel for
250 000-390 000 page faults; 1.0-1.6 with a raised threshold (docs/benchmarks.md, "glibc's mmap
threshold").

:func:`raise_mmap_threshold` allocates and frees one block of the size wanted, which raises
the threshold to it (and the heap's trim threshold to twice it) the way any larger free would:
glibc's own adjustment goes on from there, which a ``mallopt`` would switch off, and a threshold
the operator set (``MALLOC_MMAP_THRESHOLD_``) is left as it is, since that switches the
adjustment off. The ``streamsrv`` program calls it before it serves; a program that embeds the
library can call it itself.
"""

from __future__ import annotations

import ctypes
import platform

#: Allocations up to this size come from the heap: four times the largest read buffer.
MMAP_THRESHOLD = 1 << 20


def raise_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Raise glibc's dynamic mmap threshold to at least ``size`` (at most 32 MiB, glibc's
    ceiling for it). Returns False where the C library is not glibc (nothing is done)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        malloc, free = libc.malloc, libc.free
    except (OSError, AttributeError):
        return False
    malloc.argtypes, malloc.restype = (ctypes.c_size_t,), ctypes.c_void_p
    free.argtypes, free.restype = (ctypes.c_void_p,), None
    block = malloc(size)
    if not block:
        return False
    free(block)  # above the threshold, this block was mapped: freeing it raises the threshold
    return True
