"""Training loop and batched prediction for the torch network.

Works on canonical CSR matrices (see ``_batching``) and numpy targets; it
knows the losses and optimizers, not the estimators that call it.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ._batching import iter_row_batches, pad_rows, row_widths

LOSSES = ("squared_error", "log_loss", "multinomial_log_loss")
OPTIMIZERS = ("adam", "adagrad")

# Rows of pairs materialised at once at predict time: bounds the
# (rows, pairs, max(n_factors, attention_size)) float32 intermediates.
PREDICT_PAIR_BUDGET = 1 << 19
PREDICT_MAX_ROWS = 1 << 14


@dataclass
class TrainingConfig:
    """Everything the loop needs to know, as plain values."""

    loss: str
    optimizer: str
    learning_rate: float
    batch_size: int
    max_iter: int
    tol: float
    n_iter_no_change: int
    shuffle: bool
    alpha: float
    attention_alpha: float
    verbose: int = 0


@dataclass
class TrainingResult:
    n_iter: int = 0
    t: int = 0
    converged: bool = False
    loss_curve: list = field(default_factory=list)


class TrainingDivergedError(ValueError):
    """The training objective became NaN or infinite."""


def per_sample_loss(loss, output, target):
    if loss == "squared_error":
        return (output[:, 0] - target).square()
    if loss == "log_loss":
        return F.binary_cross_entropy_with_logits(
            output[:, 0], target, reduction="none"
        )
    return F.cross_entropy(output, target.long(), reduction="none")


def make_optimizers(module, name, learning_rate):
    """Optimizers that update only the rows of the feature tables a batch touches."""
    sparse, dense = module.sparse_parameters(), module.dense_parameters()
    if name == "adagrad":
        return [torch.optim.Adagrad(sparse + dense, lr=learning_rate)]
    return [
        torch.optim.SparseAdam(sparse, lr=learning_rate),
        torch.optim.Adam(dense, lr=learning_rate),
    ]


def train(module, X_csr, target, sample_weight, config, rng, device):
    """Fit ``module`` in place by mini-batch gradient descent.

    Parameters
    ----------
    module : AttentionalFactorizationMachine
        Already on ``device``.
    X_csr : scipy.sparse.csr_matrix
        Canonical active features (see ``_batching.as_active_features``).
    target : ndarray of shape (n_samples,)
        Float targets: standardised values, 0/1 labels or class indices.
    sample_weight : ndarray of shape (n_samples,)
        Non-negative weights with a positive sum.
    config : TrainingConfig
    rng : numpy.random.RandomState
        Source of the shuffling order and of the dropout seed.
    device : torch.device

    Returns
    -------
    result : TrainingResult
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
    target_t = torch.as_tensor(target, dtype=torch.float32, device=device)
    weight_t = torch.as_tensor(sample_weight, dtype=torch.float32, device=device)
    # Dividing by the mean weight makes unit weights give the plain mean and
    # leaves training unchanged when all weights are scaled by a constant.
    weight_t = weight_t / weight_t.mean()
    n_samples = X_csr.shape[0]
    optimizers = make_optimizers(module, config.optimizer, config.learning_rate)

    result = TrainingResult()
    best_loss = np.inf
    no_improvement = 0
    module.train()
    try:
        for epoch in range(config.max_iter):
            start = time.perf_counter()
            shuffle_rng = rng if config.shuffle else None
            epoch_loss = 0.0
            for rows in iter_row_batches(n_samples, config.batch_size, shuffle_rng):
                batch = pad_rows(X_csr, rows).to(device)
                rows_t = torch.from_numpy(rows).to(device)
                output, squared_norm = module.forward_with_penalty(
                    batch.index, batch.value, batch.mask, generator
                )
                sample_objective = (
                    per_sample_loss(config.loss, output, target_t[rows_t])
                    + config.alpha * squared_norm
                )
                weighted_sum = (weight_t[rows_t] * sample_objective).sum()
                objective = (
                    weighted_sum / len(rows)
                    + config.attention_alpha * module.attention_penalty()
                )
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                objective.backward()
                # sparse updates build tensors from valid indices by
                # construction; opting out of checks explicitly also stops
                # torch from warning that they are implicitly off
                with torch.sparse.check_sparse_tensor_invariants(enable=False):
                    for optimizer in optimizers:
                        optimizer.step()
                epoch_loss += weighted_sum.item()
                result.t += len(rows)

            epoch_loss = (
                epoch_loss / n_samples
                + config.attention_alpha * module.attention_penalty().item()
            )
            if not np.isfinite(epoch_loss):
                raise TrainingDivergedError(
                    f"The training loss became {epoch_loss} at epoch {epoch + 1}: "
                    "training diverged. Lower learning_rate_init or raise alpha."
                )
            result.n_iter = epoch + 1
            result.loss_curve.append(epoch_loss)
            if config.verbose:
                print(
                    f"Epoch {epoch + 1}, loss = {epoch_loss:.8f}, "
                    f"{time.perf_counter() - start:.2f} s"
                )

            if epoch_loss > best_loss - config.tol:
                no_improvement += 1
            else:
                no_improvement = 0
            best_loss = min(best_loss, epoch_loss)
            if no_improvement >= config.n_iter_no_change:
                result.converged = True
                if config.verbose:
                    print(
                        f"Training loss did not improve more than tol={config.tol} "
                        f"for {config.n_iter_no_change} consecutive epochs. Stopping."
                    )
                break
    finally:
        module.eval()
    return result


def predict_batches(widths):
    """Split rows into chunks of equal width whose pair tensors stay bounded.

    Parameters
    ----------
    widths : ndarray of int
        Number of active features of each row.

    Yields
    ------
    rows : ndarray of int
        Row numbers of one chunk. All rows of a chunk have the same width, so
        nothing is padded and each row's output is computed exactly as if it
        were predicted alone. A chunk holds at most ``PREDICT_PAIR_BUDGET``
        pairs (or a single row, however wide).
    """
    order = np.argsort(widths, kind="stable")
    sorted_widths = widths[order]
    boundaries = np.flatnonzero(np.diff(sorted_widths)) + 1
    for group in np.split(order, boundaries):
        width = int(widths[group[0]])
        pairs = max(width * (width - 1) // 2, 1)
        size = max(1, min(PREDICT_MAX_ROWS, PREDICT_PAIR_BUDGET // pairs))
        for start in range(0, len(group), size):
            yield group[start : start + size]


def predict_raw(module, X_csr, device):
    """Raw network outputs for every row, as float64 of shape (n_samples, n_outputs)."""
    n_outputs = module.bias.shape[0]
    out = np.empty((X_csr.shape[0], n_outputs), dtype=np.float64)
    module.eval()
    with torch.inference_mode():
        for rows in predict_batches(row_widths(X_csr)):
            batch = pad_rows(X_csr, rows).to(device)
            output = module(batch.index, batch.value, batch.mask)
            out[rows] = output.cpu().numpy()
    return out
