"""torch's lazily imported modules, imported whole before training starts.

``torch.optim.Optimizer`` imports ``torch._dynamo`` (and with it sympy) the
first time an optimizer is built. A Ctrl-C that lands inside that import
leaves sympy half-imported in ``sys.modules``, and every later optimizer
in the process then fails (``module 'sympy' has no attribute 'core'``).
Python cannot undo a half-finished import, so skafm makes sure it finishes:
the import runs once, before the first training step, with SIGINT held back
until it is over and then delivered as the usual ``KeyboardInterrupt``.
"""

import contextlib
import importlib
import os
import signal
import sys
import threading

LAZY_MODULES = ("torch._dynamo",)


def import_lazy_modules():
    """Import torch's lazily imported modules, letting no Ctrl-C cut it short."""
    missing = [name for name in LAZY_MODULES if name not in sys.modules]
    if not missing:
        return
    with interrupts_held_back():
        for name in missing:
            importlib.import_module(name)


@contextlib.contextmanager
def interrupts_held_back():
    """Hold SIGINT back in the body and raise ``KeyboardInterrupt`` after it.

    Only the main thread receives signals; elsewhere the body just runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    received = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, TypeError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)
