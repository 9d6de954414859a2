"""Progress bar within an epoch: tqdm when installed, a plain line otherwise."""

import contextlib
import sys
import time


class PlainProgress:
    """A one-line progress report on stderr, redrawn at most every 0.2 s."""

    def __init__(self, total, description, stream=None):
        self.total = total
        self.description = description
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._last_draw = 0.0

    def update(self, n):
        self.done += n
        now = time.perf_counter()
        if now - self._last_draw >= 0.2 or self.done >= self.total:
            self._last_draw = now
            percent = 100.0 * self.done / max(self.total, 1)
            self.stream.write(
                f"\r{self.description}: {percent:5.1f}% "
                f"({self.done}/{self.total} samples)"
            )
            self.stream.flush()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


@contextlib.contextmanager
def progress_bar(total, description, enabled):
    """Yield an object with ``update(n_samples)``, or None when not enabled."""
    if not enabled:
        yield None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        bar = PlainProgress(total, description)
    else:
        bar = tqdm(total=total, desc=description, unit="samples", leave=False)
    try:
        yield bar
    finally:
        bar.close()
