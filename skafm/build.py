"""Compile skafm's CPU training kernels ahead of time.

The first model trained on the CPU compiles the fused kernels (with the
system's C++ compiler, against the installed torch) and caches them; run
this at install time, in CI or a Docker image build, so that no user's
first fit waits for the compiler::

    python -m skafm.build

It prints where the kernels are and exits with status 0 when they are built
and load, 1 when they cannot be (training then uses PyTorch operations).
The cache directory follows ``SKAFM_CACHE_DIR``, else ``XDG_CACHE_HOME``,
else ``~/.cache``; the build is for the torch it runs with.
"""

import argparse
import sys
import time
import warnings

from . import _native


def main(argv=None):
    """Build (or find) the kernels; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m skafm.build", description=__doc__.split("\n")[0]
    )
    parser.parse_args(argv)
    if not _native.enabled():
        print(
            f"skafm: {_native.SWITCH} switches the kernels off; nothing to build",
            file=sys.stderr,
        )
        return 1
    start = time.perf_counter()
    was_built = _native.verified(_native.library_path())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernels = _native.kernels()
    if kernels is None:
        reasons = "; ".join(str(warning.message) for warning in caught)
        print(f"skafm: no kernels: {reasons}", file=sys.stderr)
        return 1
    how = (
        "already built"
        if was_built
        else f"compiled in {time.perf_counter() - start:.1f} s"
    )
    print(f"skafm kernels ready: {_native.library_path()} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
