"""One OpenMP worker team at a time: the engine thread and the threads that hand it work release
theirs before they wait.

Why: torch's CPU kernels run on OpenMP (libgomp in the Linux wheels), and every OS thread that runs a
parallel op keeps a team of worker threads for the rest of its life. Once two threads hold one (the
main thread that loaded or trained the model, and the engine thread that runs it), libgomp counts
more threads than CPUs and cuts the time its idle workers spin before sleeping from ~300,000 to ~100
spins (its "throttled" count; GOMP_SPINCOUNT does not change it), so every parallel op waits for a
futex wake-up. Measured on a 2-core AVX-512 EPYC (bench/omp_teams.py): an 8-row bf16 576x1536 linear
54 us alone, 107 us with a second team alive; an 8-row decode step of SmolLM2-135M 40 ms -> 54-58 ms.
OpenMP 5.0's omp_pause_resource_all(omp_pause_soft) frees the calling thread's team (its next
parallel op starts a new one, ~0.1 ms), which no torch API exposes: hence ctypes.
"""
from __future__ import annotations

import ctypes
import re

_pausers: list | None = None  # omp_pause_resource_all of each OpenMP runtime loaded, once torch is


def _runtimes() -> list:
    global _pausers
    if _pausers is None:
        try:
            with open("/proc/self/maps") as f:
                maps = f.read()
        except OSError:  # not Linux: nothing to release (macOS torch uses libomp; not measured there)
            _pausers = []
            return _pausers
        found = []
        for path in dict.fromkeys(re.findall(r"(/\S*/lib(?:gomp|iomp5|omp)\b[^/\s]*\.so[^/\s]*)", maps)):
            try:
                fn = ctypes.CDLL(path).omp_pause_resource_all  # the copy already loaded, not a new one
            except (OSError, AttributeError):
                continue
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            found.append(fn)
        if not found and "libtorch" not in maps:
            return []  # torch not loaded yet: look again next time
        _pausers = found
    return _pausers


def release_threads() -> None:
    """Free the calling thread's OpenMP worker team, if it has one (a no-op inside a parallel region)."""
    for pause in _runtimes():
        pause(1)  # omp_pause_soft
