"""Fused CPU kernels for training and prediction, compiled on first use.

A training step in eager PyTorch makes dozens of passes over a batch's
per-pair tensors, and on the CPU those passes, not the arithmetic, take most
of its time. ``_kernels.cpp`` fuses them: the batch's row gather, the
feature lookup, the grouping of identical pairs, the attention pooling
around the attention network's matrix products, dropout and the
optimizer's row updates, each in one or two passes, and an attention
model's whole prediction. skafm ships them as source:
they are compiled with the system's C++ compiler against the installed
torch the first time a model trains on the CPU, cached on disk, and loaded
as ``torch.ops.skafm``; :mod:`skafm._nn.ops` decides which operations use
them. Without a compiler, or
with ``SKAFM_NATIVE_KERNELS=0``, training runs the same computation in
PyTorch operations, which give the same results to within float rounding,
dropout masks aside (the kernels draw them from a stream of their own).
"""

import atexit
import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .exceptions import KernelBuildWarning

# the build's one line goes through logging, which prints warnings to
# stderr when the application configures nothing: visible by default, and
# silenced with logging.getLogger("skafm").setLevel(logging.ERROR)
logger = logging.getLogger("skafm")

SOURCE = Path(__file__).with_name("_kernels.cpp")
SWITCH = "SKAFM_NATIVE_KERNELS"
CACHE_DIR = "SKAFM_CACHE_DIR"
# the operations _kernels.cpp registers: a library without them is not this build
REQUIRED_KERNELS = (
    "pair_products",
    "pool_forward",
    "pool_backward",
    "hidden_grad",
    "scatter_pair_grads",
    "lazy_adam",
    "adam_dense",
    "training_pair_groups",
    "feature_lookup",
    "feature_lookup_backward",
    "relu_scores",
    "dropout",
    "pad_rows",
    "predict_attention",
)


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
        try:
            torch.ops.load_library(str(library))
        except OSError:
            # a complete build that does not load (a changed system library):
            # built once more, and a second failure is final
            torch.ops.load_library(str(rebuilt_library(library)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _warn_fallback(
            f"could not build its CPU training kernels ({_first_line(error)})"
        )
        return None
    missing = [name for name in REQUIRED_KERNELS if not hasattr(torch.ops.skafm, name)]
    if missing:
        _warn_fallback(
            f"loaded a kernel library {library} without {', '.join(missing)}"
        )
        return None
    return torch.ops.skafm


def _warn_fallback(reason):
    warnings.warn(
        f"skafm {reason}; training uses PyTorch operations instead, which are "
        f"slower. Set {SWITCH}=0 to skip the build.",
        KernelBuildWarning,
        stacklevel=3,
    )


def built_library():
    """Path of the compiled kernels, compiling them if no verified build matches.

    A build is trusted only in a directory owned by the current user and
    closed to everyone else, as a file that user owns and only that user
    can write, whose size and SHA-256 match the record written beside it
    once the build was complete. Anything else (a truncated library after a
    crash, another user's file) is rebuilt. Processes that need the same
    build wait on a lock file for the one that compiles it.
    """
    torch_dir = Path(torch.__file__).parent
    target = library_path()
    directory, name = target.parent, target.stem
    if verified(target):
        return target
    with build_lock(directory / f"{name}.lock"):
        # another process may have finished the build while this one waited
        if verified(target):
            return target
        _remove_leftovers(directory, name)
        _compile(torch_dir, directory, name, target)
    return target


def library_path():
    """Where the build for this source, torch, compiler command and CPU lies."""
    torch_dir = Path(torch.__file__).parent
    key = hashlib.sha256()
    command = compile_command(torch_dir, "OUTPUT")
    for part in (SOURCE.read_bytes(), torch.__version__, " ".join(command), _cpu()):
        key.update(part if isinstance(part, bytes) else part.encode())
    return build_directory() / f"skafm_kernels_{key.hexdigest()[:20]}.so"


def rebuilt_library(library):
    """Build again a library that was verified but failed to load."""
    for path in (library, _record_of(library)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return built_library()


def _compile(torch_dir, directory, name, target):
    # compiled under a temporary name, synced to disk, then renamed, and the
    # record written last: a crash at any point leaves no library that
    # verifies, only one that is rebuilt
    handle, partial = tempfile.mkstemp(
        prefix=f"{name}.", suffix=".partial", dir=directory
    )
    os.close(handle)
    logger.warning(
        "skafm: compiling its CPU training kernels for torch %s into %s; this "
        "happens once per torch version (`python -m skafm.build` does it ahead "
        "of time)",
        torch.__version__,
        directory,
    )
    start = time.perf_counter()
    try:
        result = subprocess.run(
            compile_command(torch_dir, partial),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"compiler failed: {result.stderr.strip()}")
        os.chmod(partial, 0o700)
        record = _record(partial, sync=True)
        os.replace(partial, target)
        _write_atomically(_record_of(target), record)
        _sync_directory(directory)
        logger.info("skafm: kernels compiled in %.1f s", time.perf_counter() - start)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def verified(library):
    """Whether ``library`` is a complete build that only this user could write."""
    record = _record_of(library)
    if not (_private_file(library) and _private_file(record)):
        return False
    try:
        return record.read_text() == _record(library)
    except OSError:
        return False


def _record(path, sync=False):
    digest = hashlib.sha256()
    with open(path, "rb") as library:
        if sync:
            os.fsync(library.fileno())
        for block in iter(lambda: library.read(1 << 20), b""):
            digest.update(block)
    return f"{os.path.getsize(path)} {digest.hexdigest()}\n"


def _record_of(library):
    return library.with_suffix(".sha256")


def _write_atomically(path, text):
    handle, partial = tempfile.mkstemp(
        prefix=f"{path.stem}.", suffix=".partial", dir=path.parent
    )
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def _sync_directory(directory):
    # the renames are durable only once the directory itself is synced
    with contextlib.suppress(OSError, AttributeError):
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _remove_leftovers(directory, name):
    """Delete what killed builds left: this build's partial files, and the
    ``tmp*.so`` files of earlier skafm versions once they are an hour old."""
    leftovers = [*directory.glob(f"{name}.*.partial"), directory / f"{name}.so"]
    stale_before = time.time() - 3600
    for path in directory.glob("tmp*.so"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < stale_before:
                leftovers.append(path)
    for path in leftovers:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def build_lock(path):
    """Hold an exclusive lock on ``path`` (where the platform has ``flock``)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


class UnsafeCacheError(OSError):
    """The build cache could be written by someone other than the current user."""


def build_directory():
    """The cache directory if it is private, else a private temporary one.

    A library in a directory that others can write could be replaced by
    theirs and would then run as the current user: such a cache is not used.
    """
    directory = cache_directory()
    try:
        return private_directory(directory)
    except UnsafeCacheError as error:
        warnings.warn(
            f"skafm does not use the kernel cache {directory}: {error}. The "
            "kernels are built in a private temporary directory instead, for "
            f"this process only; point {CACHE_DIR} at a directory of your own "
            "to keep them.",
            KernelBuildWarning,
            stacklevel=4,
        )
        return _temporary_directory()


def private_directory(directory):
    """Create ``directory`` (mode 0700) if needed and check that it is private."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    # mode 0700 whatever the umask: mkdir only ever narrows the mode it is given
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    if not _private(directory.stat()):
        raise UnsafeCacheError(
            "it is not a directory owned by this user and closed to group and others"
        )
    return directory


@functools.cache
def _temporary_directory():
    directory = Path(tempfile.mkdtemp(prefix="skafm-kernels-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def _private_file(path):
    try:
        status = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(status.st_mode) and _private(status)


def _private(status):
    owner = getattr(os, "geteuid", None)
    if owner is None:
        # no POSIX owners or modes to check (Windows)
        return True
    if stat.S_ISLNK(status.st_mode):
        return False
    return status.st_uid == owner() and not status.st_mode & 0o022


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
    """Where builds are kept: ``SKAFM_CACHE_DIR``, else the user's cache folder.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification says.
    """
    configured = os.environ.get(CACHE_DIR)
    if configured:
        return Path(configured).absolute()
    base = Path(os.environ.get("XDG_CACHE_HOME", ""))
    if not base.is_absolute():
        base = Path.home() / ".cache"
    return base / "skafm"


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
