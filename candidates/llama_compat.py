"""Load llama.cpp models safely on CPUs that advertise Intel AMX.

llama-cpp-python compiles llama.cpp with ``-march=native``; on a CPU with AMX, ggml then puts weights
in its AMX "extra buffer type". Inside many virtual machines the AMX tile state is not usable, and the
first ``ldtilecfg`` dies with a general-protection fault (a segfault of the whole process) at the first
``llama_decode``. Turning off extra buffer types (llama.cpp's ``--no-repack``) keeps the weights in
plain CPU buffers and avoids AMX; for the embedded Q4_1 SmolLM2 it costs nothing (no repacked kernel
exists for Q4_1).

``load_llama`` builds ``llama_cpp.Llama`` with that setting when AMX is present;
``python -m candidates.llama_server ARGS`` is ``python -m llama_cpp.server ARGS`` with the same fix.
"""

from __future__ import annotations

import runpy
import sys
import threading
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

_PATCH_LOCK = threading.Lock()


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (empty where unavailable).

    >>> sorted(cpu_flags("processor : 0\\nflags : fpu avx2 amx_tile\\n"))
    ['amx_tile', 'avx2', 'fpu']
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@cache
def needs_no_repack() -> bool:
    """True on CPUs with AMX tiles, where llama.cpp's AMX buffers may crash the process."""
    return bool({"amx_tile", "amx_int8", "amx_bf16"} & cpu_flags())


@contextmanager
def _extra_buffer_types(enabled: bool):
    import llama_cpp.llama_cpp as native

    if enabled:
        yield
        return
    with _PATCH_LOCK:
        original = native.llama_model_default_params

        def default_params() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        native.llama_model_default_params = default_params
        try:
            yield
        finally:
            native.llama_model_default_params = original


def load_llama(model_path: str | Path, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(model_path, **kwargs)``, without AMX buffers where they are unsafe."""
    from llama_cpp import Llama

    with _extra_buffer_types(not needs_no_repack()):
        return Llama(model_path=str(model_path), **kwargs)


def main(argv: list[str] | None = None) -> None:
    """Run llama-cpp-python's OpenAI-compatible server with the AMX fix applied."""
    sys.argv = ["llama_cpp.server", *(sys.argv[1:] if argv is None else argv)]
    with _extra_buffer_types(not needs_no_repack()):
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
