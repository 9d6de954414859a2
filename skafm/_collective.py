"""What the workers of one data-parallel fit compute together.

A local fit passes no collective (``None``) and none of this runs. In a
data-parallel fit (:mod:`skafm.distributed`) every worker holds the whole
model and a part of the rows, and the training code asks a
:class:`Collective` for the data-wide figures it needs: sums of losses,
weights and counts, the union of class labels, the gradients of a step.
Every worker then takes the same decisions and the same optimizer steps, so
the models stay identical without ever being sent around.

The rows of all workers together are numbered worker after worker (rank 0's
rows first): a :class:`Shard` maps that numbering to a worker's own rows, so
that the workers can draw one shuffled order of all rows and each train on
its own rows of every global batch, as a local fit with the global batch
size would.
"""

import pickle
from dataclasses import dataclass

import numpy as np
import torch


class Collective:
    """Reductions over the processes of a ``torch.distributed`` group.

    Every method is a collective operation: all workers must call it, in the
    same order, even those whose part of a batch is empty.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup or None
        The workers; None is the default group.
    """

    def __init__(self, group=None):
        import torch.distributed as dist

        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        # gloo reduces CPU tensors, NCCL CUDA tensors
        backend = dist.get_backend(group)
        self.device = torch.device("cuda" if backend == "nccl" else "cpu")
        # what this worker put into its exchanges (its part of each)
        self.bytes_sent = 0

    def _tensor(self, array):
        return torch.as_tensor(array).to(self.device)

    def sum(self, values):
        """Element-wise sum over the workers of a float64 array (or scalar)."""
        values = np.asarray(values, dtype=np.float64)
        tensor = self._tensor(values.reshape(-1)).clone()
        self._dist.all_reduce(tensor, group=self.group)
        self.bytes_sent += tensor.numel() * tensor.element_size()
        return tensor.cpu().numpy().reshape(values.shape)

    def max(self, values):
        """Element-wise maximum over the workers of a float64 array (or scalar)."""
        values = np.asarray(values, dtype=np.float64)
        tensor = self._tensor(values.reshape(-1)).clone()
        self._dist.all_reduce(tensor, op=self._dist.ReduceOp.MAX, group=self.group)
        self.bytes_sent += tensor.numel() * tensor.element_size()
        return tensor.cpu().numpy().reshape(values.shape)

    def sum_tensor_(self, tensor):
        """Sum ``tensor`` over the workers, in place."""
        self._dist.all_reduce(tensor, group=self.group)
        self.bytes_sent += tensor.numel() * tensor.element_size()
        return tensor

    def gather_objects(self, obj):
        """Every worker's ``obj`` (picklable), in rank order."""
        gathered = [None] * self.size
        self._dist.all_gather_object(gathered, obj, group=self.group)
        self.bytes_sent += len(pickle.dumps(obj))
        return gathered

    def concatenate(self, tensor):
        """Every worker's ``tensor`` joined along the first axis, in rank order.

        The tensors may differ in length (an all-gather of padded copies):
        this is how only the table rows a step touched are exchanged.
        """
        tensor = tensor.to(self.device).contiguous()
        lengths = torch.zeros(self.size, dtype=torch.int64, device=self.device)
        lengths[self.rank] = tensor.shape[0]
        self._dist.all_reduce(lengths, group=self.group)
        longest = int(lengths.max())
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._dist.all_gather(parts, padded, group=self.group)
        self.bytes_sent += padded.numel() * padded.element_size()
        return torch.cat(
            [
                part[:length]
                for part, length in zip(parts, lengths.tolist(), strict=True)
            ]
        )


@dataclass(frozen=True)
class Shard:
    """One worker's rows within the rows of all workers.

    Attributes
    ----------
    collective : Collective
    offset : int
        Number of the worker's first row in the global numbering.
    n_local : int
    n_total : int
        Rows of all workers together.
    all_widths : ndarray of int or None
        Active features of every global row (batches group rows of similar
        width, which must be decided alike on every worker).
    """

    collective: Collective
    offset: int
    n_local: int
    n_total: int
    all_widths: object = None

    @classmethod
    def build(cls, collective, n_local, widths=None):
        counts = collective.gather_objects(int(n_local))
        offset = sum(counts[: collective.rank])
        all_widths = None
        if widths is not None:
            all_widths = np.concatenate(
                collective.gather_objects(np.asarray(widths, dtype=np.int64))
            )
        return cls(collective, offset, int(n_local), sum(counts), all_widths)

    def local_rows(self, rows):
        """The positions in this worker's rows of those of ``rows`` it holds."""
        positions = np.asarray(rows) - self.offset
        return positions[(positions >= 0) & (positions < self.n_local)]


def total(collective, value):
    """``value`` summed over the workers (itself when there is no collective)."""
    if collective is None:
        return value
    return float(collective.sum(value))
