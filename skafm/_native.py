"""Fused CPU kernels for training, compiled on first use.

A training step in eager PyTorch makes dozens of passes over a batch's
per-pair tensors, and on the CPU those passes, not the arithmetic, take most
of its time. ``_kernels.cpp`` fuses them: the batch's row gather, the
feature lookup, the grouping of identical pairs, the attention pooling
around the attention network's matrix products, dropout and the
optimizer's row updates, each in one or two passes. skafm ships them as source:
they are compiled with the system's C++ compiler against the installed
torch the first time a model trains on the CPU (about 7 s on two cores),
cached on disk, and loaded as ``torch.ops.skafm``. Without a compiler, or
with ``SKAFM_NATIVE_KERNELS=0``, training runs the same computation in
PyTorch operations, which give the same results to within float rounding,
dropout masks aside (the kernels draw them from a stream of their own).
"""

import functools
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch


class KernelBuildWarning(UserWarning):
    """skafm's CPU training kernels could not be compiled.

    Training then runs the same computation in PyTorch operations: the same
    results to within float rounding, more slowly. Set the environment
    variable ``SKAFM_NATIVE_KERNELS=0`` to skip the build (and the warning).
    """


SOURCE = Path(__file__).with_name("_kernels.cpp")
SWITCH = "SKAFM_NATIVE_KERNELS"
CACHE_DIR = "SKAFM_CACHE_DIR"


def enabled():
    """Whether the environment allows the kernels (``SKAFM_NATIVE_KERNELS``)."""
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no")


@functools.cache
def kernels():
    """``torch.ops.skafm`` with the fused kernels, or None where they cannot run.

    Built at most once per process; a failed build warns once and leaves
    training on PyTorch operations.
    """
    if not enabled():
        return None
    try:
        library = built_library()
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"skafm could not build its CPU training kernels ({_first_line(error)}); "
            "training uses PyTorch operations instead, which are slower. Set "
            f"{SWITCH}=0 to skip the build.",
            KernelBuildWarning,
            stacklevel=2,
        )
        return None
    return torch.ops.skafm


def for_tensor(tensor):
    """The kernels if they serve ``tensor`` (a CPU float tensor), else None."""
    if tensor.dtype not in (torch.float32, torch.float64):
        return None
    return for_device(tensor.device)


def for_device(device):
    """The kernels if they serve tensors on ``device`` (the CPU), else None."""
    return kernels() if torch.device(device).type == "cpu" else None


def built_library():
    """Path of the compiled kernels, compiling them if no cached build matches."""
    torch_dir = Path(torch.__file__).parent
    key = hashlib.sha256()
    command = compile_command(torch_dir, "OUTPUT")
    for part in (SOURCE.read_bytes(), torch.__version__, " ".join(command), _cpu()):
        key.update(part if isinstance(part, bytes) else part.encode())
    directory = cache_directory()
    target = directory / f"skafm_kernels_{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # compiled under a temporary name and renamed: processes that build at
    # the same time (joblib workers) never load a half-written library
    handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(handle)
    try:
        result = subprocess.run(
            compile_command(torch_dir, partial),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"compiler failed: {result.stderr.strip()}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def compile_command(torch_dir, output):
    """The compiler's command line that builds the kernels into ``output``."""
    library_dir = torch_dir / "lib"
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    return [
        os.environ.get("CXX", "c++"),
        "-O3",
        "-march=native",
        # AVX-512 where the processor has it: rows of 64 floats in 4 registers
        "-mprefer-vector-width=512",
        "-std=c++20",
        "-shared",
        "-fPIC",
        "-fopenmp",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-isystem{torch_dir / 'include'}",
        str(SOURCE),
        "-o",
        str(output),
        # libraries after the source, or the linker drops them unread
        f"-L{library_dir}",
        "-lc10",
        "-ltorch_cpu",
        f"-Wl,-rpath,{library_dir}",
    ]


def cache_directory():
    """Where builds are kept: ``SKAFM_CACHE_DIR``, else the user's cache folder."""
    configured = os.environ.get(CACHE_DIR)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skafm"


def _cpu():
    # -march=native builds for this processor: a cache shared between
    # machines keeps one build per instruction set
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {sys.platform}"


def _first_line(error):
    lines = str(error).strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [type(error).__name__])[0]
