"""Training loop and batched prediction for the torch network.

Works on canonical CSR matrices (see ``_batching``) and numpy targets. It knows
losses, optimizers and stopping rules, not the estimators that call it: the
validation score, for one, comes in as a plain callable.
"""

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from ._averaging import WeightAverage
from ._batching import (
    check_row_widths,
    iter_row_batches,
    pad_rows,
    pair_floats,
    row_widths,
)
from ._collective import Shard, total
from ._imports import import_lazy_modules
from ._nn import ops
from ._nn.inference import predicted_chunks
from ._nn.workspace import PairWorkspace
from ._optim import LazyAdam
from ._progress import progress_bar
from ._sorting import distinct_values
from ._threads import ThreadGovernor
from .exceptions import TrainingDivergedError

# Floats in one per-pair intermediate of a training (sub-)batch: 64 MB.
TRAIN_FLOAT_BUDGET = 1 << 24


@dataclass(frozen=True)
class OptimizationConfig:
    """How one epoch updates the network, as plain values."""

    loss: str
    optimizer: str
    learning_rate: float
    batch_size: int
    shuffle: bool
    alpha: float
    attention_alpha: float
    # 0 trains without a weight average
    average_decay: float = 0.0
    # "sample": each occurrence of a feature is penalised alpha |theta|^2;
    # "feature": alpha / (its weighted count), a fixed prior per feature
    penalty_scope: str = "sample"
    # > 0: alpha follows the noise, set after each epoch to this times the
    # estimated noise variance (see Trainer.follow_noise); alpha is then the
    # value in force
    alpha_per_noise: float = 0.0


@dataclass(frozen=True)
class StoppingRule:
    """When the epoch loop ends.

    With ``early_stopping`` the rule watches the validation score (higher is
    better) and the best epoch's weights are restored at the end; otherwise it
    watches the training loss.
    """

    max_iter: int
    tol: float
    n_iter_no_change: int
    early_stopping: bool


@dataclass
class TrainingData:
    """Rows, targets and weights of one data set, ready for the trainer.

    In a data-parallel fit ``shard`` places these rows among those of all
    workers, and the data-wide figures (sample count, mean weight, feature
    counts, batch order) are those of all workers' rows together.
    """

    X_csr: object
    target: torch.Tensor
    weight: torch.Tensor
    shard: Shard = None

    @classmethod
    def build(cls, X_csr, target, sample_weight, device, collective=None):
        shard = None
        if collective is not None:
            shard = Shard.build(collective, X_csr.shape[0], row_widths(X_csr))
        # dividing by the mean weight makes unit weights give the plain mean
        # and leaves training unchanged when all weights are scaled alike;
        # done in float64, before weights of 1e-300 or 1e300 meet float32
        weight = np.asarray(sample_weight, dtype=np.float64)
        weight_sum, count = weight.sum(), weight.size
        if collective is not None:
            weight_sum, count = collective.sum([weight_sum, count])
        mean = weight_sum / count if count else 1.0
        if count and not mean > 0.0:
            raise ValueError(
                "sample_weight is zero for every sample: there is nothing to fit."
            )
        return cls(
            X_csr,
            torch.as_tensor(target, dtype=torch.float32, device=device),
            torch.as_tensor(weight / mean, dtype=torch.float32, device=device),
            shard,
        )

    @property
    def collective(self):
        return None if self.shard is None else self.shard.collective

    @property
    def n_samples(self):
        """Rows of the data set (of all workers' parts together)."""
        return self.X_csr.shape[0] if self.shard is None else self.shard.n_total

    def feature_counts(self):
        """Each feature's number of occurrences, weighted as the samples are."""
        X = self.X_csr
        weight = self.weight.cpu().numpy().astype(np.float64)
        rows = np.repeat(weight, np.diff(X.indptr))
        counts = np.bincount(X.indices, weights=rows, minlength=X.shape[1])
        return counts if self.shard is None else self.collective.sum(counts)

    @property
    def widths(self):
        """Active features of each of the rows held here."""
        return row_widths(self.X_csr)

    @property
    def all_widths(self):
        """Active features of each row of the data set, in the global order."""
        return self.widths if self.shard is None else self.shard.all_widths

    def local_rows(self, rows):
        """Of a batch of global row numbers, the positions of those held here."""
        return rows if self.shard is None else self.shard.local_rows(rows)

    def total(self, value):
        """``value`` summed over the workers' parts of the data set."""
        return total(self.collective, value)


@dataclass
class EpochHistory:
    """What one call of :func:`fit_epochs` did."""

    loss_curve: list = field(default_factory=list)
    validation_scores: list = field(default_factory=list)
    samples_seen: int = 0
    converged: bool = False
    interrupted: bool = False
    best_epoch: int = -1
    # with score_to_beat: True when no epoch beat it (the caller keeps what
    # that score belongs to)
    start_kept: bool = False


# A call whose best epoch still has a mean training loss this many times the
# constant model's diverged: the target is standardised (regression) or
# starts from the class priors (classification), so that loss is known.
# Single epochs may go higher on unscaled features and still recover.
DIVERGED_LOSS_FACTOR = 100.0


def constant_model_loss(loss, n_outputs):
    """An upper bound of the mean loss of the best constant prediction."""
    if loss == "squared_error":
        return 1.0  # the standardised target's variance
    return math.log(max(n_outputs, 2))


def per_sample_loss(loss, output, target):
    if loss == "squared_error":
        return (output[:, 0] - target).square()
    if loss == "log_loss":
        return F.binary_cross_entropy_with_logits(
            output[:, 0], target, reduction="none"
        )
    return F.cross_entropy(output, target.long(), reduction="none")


def make_optimizer(module, name, learning_rate):
    """One optimizer for the network; it updates only the table rows a batch touches."""
    # torch.optim imports torch._dynamo on first use: done whole, beforehand
    import_lazy_modules()
    parameters = module.optimized_parameters()
    if name == "adagrad":
        return torch.optim.Adagrad(parameters, lr=learning_rate)
    return LazyAdam(parameters, lr=learning_rate)


class Trainer:
    """A network with the optimizers that train it.

    Kept by an estimator between calls so that ``warm_start`` and
    ``partial_fit`` continue with the optimizer's state (Adam's moments,
    Adagrad's sums), not only the weights.
    """

    def __init__(self, module, config):
        self.module = module
        self.config = config
        self.optimizer = make_optimizer(module, config.optimizer, config.learning_rate)
        self.average = self._new_average(config)
        # weighted occurrences of each feature in the data trained on, for
        # the "feature" penalty scope (see set_feature_counts)
        self.feature_counts = None
        self._penalty_table = None

    def set_feature_counts(self, counts, accumulate=False):
        """Count the features of the data to train on.

        With ``penalty_scope="feature"`` each occurrence of feature j carries
        ``1 / counts[j]`` of its penalty, so that over the data the penalty
        is ``alpha * |theta_j|^2`` per feature, however often it occurs.
        ``accumulate`` adds to the counts so far (``partial_fit``'s chunks).
        """
        counts = np.asarray(counts, dtype=np.float64)
        if accumulate and self.feature_counts is not None:
            counts = self.feature_counts + counts
        self.feature_counts = counts
        self._penalty_table = None

    def __getstate__(self):
        # the table is rebuilt from the counts on the device that trains
        return {**self.__dict__, "_penalty_table": None}

    def __setstate__(self, state):
        # trainers pickled before the penalty scope existed have no counts
        self.__dict__.update({"feature_counts": None, "_penalty_table": None})
        # and those pickled before skafm._nn kept a list of one optimizer
        if "optimizers" in state:
            state = dict(state)
            (state["optimizer"],) = state.pop("optimizers")
        self.__dict__.update(state)

    def _entry_penalty(self, batch):
        """Each entry's penalty weight, or None for the sample scope."""
        scope = getattr(self.config, "penalty_scope", "sample")
        if scope != "feature" or self.feature_counts is None:
            return None
        if self._penalty_table is None:
            counts = self.feature_counts
            table = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
            self._penalty_table = torch.as_tensor(
                table, dtype=torch.float32, device=self.device
            )
        return self._penalty_table[batch.index] * batch.mask

    def _new_average(self, config):
        if config.average_decay == 0.0:
            return None
        return WeightAverage(self.module, config.average_decay)

    @property
    def prediction_module(self):
        """The network that predicts: the weight average when there is one."""
        return self.module if self.average is None else self.average.module

    @property
    def device(self):
        return self.module.bias.device

    def adopt_optimizer_state(self, other, names=("bias", "linear", "embedding")):
        """Continue ``other``'s optimizer state for the parameters both have.

        The AFM phase starts from the FM's bias, linear weights and
        embeddings; their Adam moments or Adagrad sums carry over with them.
        The projection (rescaled) and the attention network start afresh.
        """
        if type(self.optimizer) is not type(other.optimizer):
            return
        mine = dict(self.module.named_parameters())
        theirs = dict(other.module.named_parameters())
        for name in names:
            state = other.optimizer.state.get(theirs[name])
            if state:
                self.optimizer.state[mine[name]] = copy.deepcopy(state)

    def continued(self, config, device):
        """A deep copy to train further, with the new call's settings.

        Training a copy and swapping it in only at the end means a failed
        call (diverged, bad input, interrupted validation) leaves the caller's
        model untouched.
        """
        clone = copy.deepcopy(self)
        clone.move_to(device)
        clone._penalty_table = None
        if config.optimizer != clone.config.optimizer:
            clone.optimizer = make_optimizer(
                clone.module, config.optimizer, config.learning_rate
            )
        for group in clone.optimizer.param_groups:
            group["lr"] = config.learning_rate
        if clone.average is None or config.average_decay == 0.0:
            # a new average starts from the weights trained so far
            clone.average = clone._new_average(config)
        else:
            clone.average.decay = config.average_decay
        if config.alpha_per_noise > 0.0 and clone.config.alpha_per_noise > 0.0:
            # the noise estimated so far carries over to the next call
            config = replace(config, alpha=clone.config.alpha)
        clone.config = config
        return clone

    def follow_noise(self, noise_variance):
        """Set alpha to ``alpha_per_noise`` times the noise variance, if it follows it.

        With squared error on a standardised target, the objective's
        ``alpha`` is the noise variance times the prior precision of the
        parameters (a MAP estimate's ``sigma^2 lambda``): noisier data needs
        stronger shrinkage for the same prior. ``alpha_per_noise`` is the
        precision; the variance is re-estimated as training goes, as a
        Bayesian FM samples it.
        """
        per_noise = self.config.alpha_per_noise
        if per_noise > 0.0 and np.isfinite(noise_variance):
            alpha = per_noise * max(float(noise_variance), 0.0)
            self.config = replace(self.config, alpha=alpha)

    def to_cpu(self):
        """This trainer if it is on the CPU, else a CPU copy (for pickling)."""
        if self.device.type == "cpu":
            return self
        clone = copy.deepcopy(self)
        clone.move_to(torch.device("cpu"))
        return clone

    def move_to(self, device):
        """Move the network and the optimizers' state to ``device``, in place."""
        if self.device == device:
            return
        self._penalty_table = None
        # nn.Module.to keeps the Parameter objects, so the optimizers'
        # references to them stay valid; only their state needs moving
        self.module.to(device)
        if self.average is not None:
            self.average.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    state[key] = value.to(device)

    def run_epoch(self, data, rng, generator, progress=None, governor=None):
        """One pass over ``data``; returns the objective summed over samples.

        ``governor`` (a :class:`ThreadGovernor`) is told each step's time and
        work, a row's work being its pairs plus its features.
        """
        config, module = self.config, self.module
        module.train()
        epoch_sum = torch.zeros((), device=self.device)
        shuffle_rng = rng if config.shuffle else None
        # the batches of all workers' rows; each worker trains on its own
        batches = iter_row_batches(
            data.n_samples, config.batch_size, shuffle_rng, data.all_widths
        )
        widths = data.widths
        timed = governor is not None and governor.active
        row_work = widths * (widths + 1) / 2.0 if timed else None
        workspace = PairWorkspace()
        kernels = ops.batch_gathering_kernels()
        collective = data.collective
        # one worker adds the penalty that does not depend on the rows
        adds_attention_penalty = config.attention_alpha > 0.0 and (
            collective is None or collective.rank == 0
        )
        touched = []
        try:
            for rows in batches:
                step_start = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                local = data.local_rows(rows)
                # a batch too big for memory is run in parts whose gradients
                # add up to the whole batch's: the same step, bounded memory
                parts = (
                    bounded_parts(local, widths, self._floats_per_pair())
                    if len(local)
                    else []
                )
                if not parts and adds_attention_penalty:
                    (config.attention_alpha * module.attention_penalty()).backward()
                for position, part in enumerate(parts):
                    batch = pad_rows(data.X_csr, part, kernels).to(self.device)
                    part_t = torch.from_numpy(part).to(self.device)
                    sample_objective = self._sample_objective(
                        batch, data.target[part_t], generator, workspace
                    )
                    weighted_sum = (data.weight[part_t] * sample_objective).sum()
                    objective = weighted_sum / len(rows)
                    if position == 0 and adds_attention_penalty:
                        objective = objective + (
                            config.attention_alpha * module.attention_penalty()
                        )
                    objective.backward()
                    epoch_sum += weighted_sum.detach()
                    touched.append(batch.index.view(-1))
                if collective is not None:
                    touched = [self._reduce_gradients(touched, collective)]
                self._step(touched)
                touched = []
                if row_work is not None:
                    governor.record(
                        time.perf_counter() - step_start, row_work[local].sum()
                    )
                if progress is not None:
                    progress.update(len(rows))
        finally:
            module.eval()
            if self.average is not None:
                self.average.sync()
        return data.total(epoch_sum.item())

    def _reduce_gradients(self, touched, collective):
        """Sum the step's gradients over the workers; returns the touched rows.

        The tables' gradients are sparse: only the rows some worker's part of
        the batch touched are exchanged. A parameter no worker computed a
        gradient for keeps none, as in a local step.
        """
        device = self.device
        for table in self.module.sparse_parameters():
            if not table.requires_grad:
                continue
            if table.grad is None:
                rows = torch.zeros(0, dtype=torch.int64, device=device)
                values = table.new_zeros((0, table.shape[1]))
            else:
                grad = table.grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
            rows = collective.concatenate(rows).to(device)
            values = collective.concatenate(values).to(device)
            table.grad = (
                None
                if rows.numel() == 0
                else torch.sparse_coo_tensor(
                    rows.unsqueeze(0), values, table.shape, check_invariants=False
                )
            )
        dense = [p for p in self.module.dense_parameters() if p.requires_grad]
        if dense:
            flat = torch.cat(
                [
                    torch.ones(1, device=device)
                    if p.grad is None
                    else torch.zeros(1, device=device)
                    for p in dense
                ]
                + [
                    (torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1)
                    for p in dense
                ]
            )
            flat = collective.sum_tensor_(flat.to(collective.device)).to(device)
            missing, grads = flat[: len(dense)], flat[len(dense) :]
            for p, none_here in zip(dense, missing.tolist(), strict=True):
                size = p.numel()
                grad, grads = grads[:size], grads[size:]
                # a gradient no worker computed stays None
                p.grad = None if none_here == collective.size else grad.view_as(p)
        local = torch.cat(touched) if touched else torch.zeros(0, dtype=torch.int64)
        return collective.concatenate(distinct_values(local.to(device))).to(device)

    def _sample_objective(self, batch, target, generator, workspace):
        """Each row's loss plus its L2 penalty."""
        module, config = self.module, self.config
        args = (batch.index, batch.value, batch.mask, generator, workspace)
        if config.alpha == 0.0:
            return per_sample_loss(config.loss, module(*args), target)
        output, squared_norm = module.forward_with_penalty(
            *args, penalty_weight=self._entry_penalty(batch)
        )
        loss = per_sample_loss(config.loss, output, target)
        return loss + config.alpha * squared_norm

    def _step(self, touched):
        """One optimizer step; ``touched`` holds the feature indices of the batch."""
        rows = None
        if self.average is not None:
            rows = distinct_values(torch.cat(touched))
            self.average.before_step(rows)
        # sparse updates build tensors from valid indices by construction;
        # opting out of checks explicitly also stops torch from warning that
        # they are implicitly off
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            self.optimizer.step()
        if self.average is not None:
            self.average.after_step(rows)

    def _floats_per_pair(self):
        # sum pooling never builds per-pair tensors
        return self.module.floats_per_pair if self.module.attention else 0

    def mean_objective(self, epoch_sum, n_samples):
        penalty = self.config.attention_alpha * self.module.attention_penalty().item()
        return epoch_sum / n_samples + penalty

    def mean_loss(self, data):
        """Weighted mean loss of the predicting network on ``data``, no penalties."""
        loss_sum = 0.0
        with torch.inference_mode():
            for rows, output in predicted_chunks(self.prediction_module, data.X_csr):
                rows_t = torch.from_numpy(rows).to(self.device)
                losses = per_sample_loss(self.config.loss, output, data.target[rows_t])
                loss_sum += (data.weight[rows_t] * losses).sum().item()
        return data.total(loss_sum) / data.n_samples

    def state(self):
        """All but the network, as tensors and plain values (for ``skafm.io``)."""
        trainer = self.to_cpu()
        return {
            "optimization": asdict(trainer.config),
            # a list, as in files written when there were two optimizers
            "optimizers": [trainer.optimizer.state_dict()],
            "average": None if trainer.average is None else trainer.average.state(),
            "feature_counts": None
            if trainer.feature_counts is None
            else torch.from_numpy(trainer.feature_counts),
        }

    @classmethod
    def from_state(cls, module, state):
        """A trainer of ``module`` with the rest of :meth:`state`'s output."""
        trainer = cls(module, OptimizationConfig(**state["optimization"]))
        (optimizer_state,) = state["optimizers"]
        trainer.optimizer.load_state_dict(optimizer_state)
        if trainer.average is not None:
            trainer.average.load_state(state["average"])
        if state["feature_counts"] is not None:
            trainer.set_feature_counts(state["feature_counts"].numpy())
        return trainer

    def weights(self):
        """A copy of the network's parameters and of their average."""
        return {
            "network": {
                k: v.detach().clone() for k, v in self.module.state_dict().items()
            },
            "average": None if self.average is None else self.average.state(),
        }

    def load_weights(self, weights):
        self.module.load_state_dict(weights["network"])
        if weights["average"] is not None:
            self.average.load_state(weights["average"])


def fit_epochs(
    trainer,
    data,
    rng,
    rule,
    *,
    validation_score=None,
    validation_label=None,
    loss_scale=1.0,
    verbose=0,
    first_epoch=1,
    score_to_beat=None,
    noise_variance=None,
    warning_stacklevel=6,
):
    """Train for up to ``rule.max_iter`` epochs.

    Parameters
    ----------
    trainer : Trainer
    data : TrainingData
    rng : numpy.random.RandomState
        Source of the shuffling order and of the dropout seed.
    rule : StoppingRule
    validation_score : callable or None
        Called after each epoch with no argument; returns the validation
        score (higher is better). Required when ``rule.early_stopping``.
    verbose : int
        1 prints one line per epoch, 2 adds a progress bar within epochs.
    first_epoch : int
        Number shown for the first epoch of this call (warm starts go on
        counting).
    score_to_beat : float or None
        With early stopping, the validation score of the model this network
        starts from (an FM's, for the AFM that starts from it): an epoch must
        beat it to count as the best. When none does, ``history.start_kept``
        is set and the trainer holds its last weights; the caller keeps the
        model the score belongs to.
    validation_label : str or None
        What the validation score is, for ``verbose``: ``"loss"`` prints the
        loss itself (the score is its negative); a scorer's name prints as
        ``validation <name>``; None as ``validation score``.
    loss_scale : float
        Factor that puts the training objective in the units of the
        estimator's ``loss_curve_`` (the regressor's target is standardised
        in training), so that ``verbose`` prints it in the units of the
        validation loss.
    noise_variance : callable or None
        Called after each epoch with no argument when the trainer's alpha
        follows the noise (``alpha_per_noise > 0``): the held-out mean loss,
        in training units. None takes the epoch's training objective, whose
        dropout keeps it from the optimism of a network's errors on its own
        training rows.
    warning_stacklevel : int
        ``stacklevel`` of the interruption warning, so that it points at the
        user's call.

    Returns
    -------
    history : EpochHistory
        A ``KeyboardInterrupt`` ends training early, with a warning, and is
        recorded in ``history.interrupted``; the best weights so far are kept.
    """
    check_row_widths(data.widths, trainer._floats_per_pair())
    device = trainer.device
    generator = torch.Generator(device=device)
    seed = int(rng.randint(np.iinfo(np.int32).max))
    # workers of one data-parallel fit drop out differently: rows of theirs at
    # the same place in their parts share no mask
    generator.manual_seed(seed if data.shard is None else seed + data.collective.rank)
    history = EpochHistory()
    best_score, best_weights, no_improvement = -np.inf, None, 0
    if score_to_beat is not None and rule.early_stopping:
        best_score = score_to_beat

    diverged_above = DIVERGED_LOSS_FACTOR * constant_model_loss(
        trainer.config.loss, trainer.module.n_outputs
    )
    last_epoch = first_epoch + rule.max_iter - 1
    epoch_seconds = []
    if validation_score is not None and validation_label is None:
        validation_label = "score"
    # one governor for all epochs: what it learns of the free cores carries over
    with ThreadGovernor.for_training(device) as governor:
        for epoch in range(first_epoch, last_epoch + 1):
            start = time.perf_counter()
            try:
                show_bar = verbose >= 2
                with progress_bar(data.n_samples, f"Epoch {epoch}", show_bar) as bar:
                    epoch_sum = trainer.run_epoch(data, rng, generator, bar, governor)
                loss = trainer.mean_objective(epoch_sum, data.n_samples)
                check_finite(loss, epoch)
                # scored inside the guard: Ctrl-C during a slow scorer ends
                # training as one during an epoch does (the epoch is not counted)
                score = -loss if validation_score is None else validation_score()
                if trainer.config.alpha_per_noise > 0.0:
                    noise = loss if noise_variance is None else noise_variance()
            except KeyboardInterrupt:
                history.interrupted = True
                warnings.warn(
                    f"Training interrupted by the user during epoch {epoch}; the model "
                    "keeps the best weights found so far.",
                    UserWarning,
                    stacklevel=warning_stacklevel,
                )
                break
            if np.isnan(score):
                raise ValueError(
                    f"The validation score is NaN at epoch {epoch}: early stopping "
                    "cannot compare epochs. Check the scoring function."
                )
            history.loss_curve.append(loss)
            history.samples_seen += data.n_samples
            if trainer.config.alpha_per_noise > 0.0:
                trainer.follow_noise(noise)
            if validation_score is not None:
                history.validation_scores.append(score)
            epoch_seconds.append(time.perf_counter() - start)
            if verbose:
                print(
                    epoch_line(
                        epoch,
                        last_epoch,
                        loss_scale * loss,
                        score,
                        validation_label,
                        epoch_seconds,
                    )
                )

            # the loss rule compares losses, the early stopping rule scores; both
            # as "higher is better" so one bookkeeping serves the two
            no_improvement = no_improvement + 1 if score < best_score + rule.tol else 0
            if score > best_score:
                best_score = score
                history.best_epoch = len(history.loss_curve) - 1
                if rule.early_stopping:
                    best_weights = trainer.weights()
            if no_improvement >= rule.n_iter_no_change:
                history.converged = True
                if verbose:
                    watched = (
                        "Validation score" if rule.early_stopping else "Training loss"
                    )
                    print(
                        f"{watched} did not improve more than tol={rule.tol} for "
                        f"{rule.n_iter_no_change} consecutive epochs. Stopping."
                    )
                break

    if history.loss_curve and min(history.loss_curve) > diverged_above:
        raise TrainingDivergedError(
            f"The training loss stayed above {min(history.loss_curve):.4g}, "
            f"over {DIVERGED_LOSS_FACTOR:g} times that of a constant prediction, "
            f"for all {len(history.loss_curve)} epochs: training diverged. "
            + DIVERGENCE_ADVICE
        )
    if best_weights is not None:
        trainer.load_weights(best_weights)
    history.start_kept = (
        score_to_beat is not None and rule.early_stopping and (best_weights is None)
    )
    return history


DIVERGENCE_ADVICE = (
    "Lower learning_rate_init, raise alpha, or scale features with large "
    "values (e.g. with MaxAbsScaler)."
)


def epoch_line(epoch, last_epoch, loss, score, validation_label, epoch_seconds):
    """The ``verbose`` line of an epoch: its number, loss, score, time, time left."""
    parts = [f"Epoch {epoch}/{last_epoch}", f"loss = {loss:.6f}"]
    if validation_label == "loss":
        parts.append(f"validation loss = {-score:.6f}")
    elif validation_label is not None:
        parts.append(f"validation {validation_label} = {score:.6f}")
    parts.append(f"{epoch_seconds[-1]:.2f} s")
    line = ", ".join(parts)
    remaining = last_epoch - epoch
    if remaining > 0:
        # an upper bound: early stopping or convergence may end sooner
        left = remaining * sum(epoch_seconds) / len(epoch_seconds)
        line += f" (at most {_duration(left)} left)"
    return line


def _duration(seconds):
    if seconds < 1:
        return "under 1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_finite(loss, epoch):
    if not np.isfinite(loss):
        raise TrainingDivergedError(
            f"The training loss became {loss} at epoch {epoch}: training "
            "diverged. " + DIVERGENCE_ADVICE
        )


def bounded_parts(rows, widths, floats_per_pair, budget=None):
    """Cut a batch into parts whose per-pair tensors hold at most ``budget`` floats.

    Returns ``[rows]`` when the whole batch fits, which is the usual case.
    """
    budget = TRAIN_FLOAT_BUDGET if budget is None else budget
    row_widths_ = widths[rows]
    widest = int(row_widths_.max(initial=0))
    if len(rows) * int(pair_floats(widest, floats_per_pair)) <= budget:
        return [rows]
    rows = rows[np.argsort(row_widths_, kind="stable")]
    cost = pair_floats(widths[rows], max(floats_per_pair, 1))
    parts, start = [], 0
    while start < len(rows):
        stops = np.arange(start + 1, len(rows) + 1)
        # sorted by width, so a part's widest row is its last
        fits = (stops - start) * cost[stops - 1] <= budget
        stop = int(stops[fits][-1]) if fits.any() else start + 1
        parts.append(rows[start:stop])
        start = stop
    return parts
