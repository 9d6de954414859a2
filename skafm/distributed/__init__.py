"""Data-parallel training: one model trained by several workers at once.

:func:`fit_distributed` runs synchronous data-parallel training on
``torch.distributed`` (gloo), with the workers started as local processes,
Ray actors or tasks on a Dask cluster; :func:`fit_shard` is the same
training inside a process group started otherwise (``torchrun`` on several
hosts). See the user guide's "Scaling out", "One model trained by several
workers".
"""

from ._backends import WorkerError
from ._fit import fit_distributed
from ._worker import fit_shard

__all__ = ["WorkerError", "fit_distributed", "fit_shard"]
