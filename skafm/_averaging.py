"""Exponential moving average of a network's weights during training.

Averaging the weights along the optimizer's path (Polyak averaging, the
"EMA" of deep learning practice) smooths out the noise of the last steps: a
network that predicts with the averaged weights generalizes better than the
last iterate. The feature tables are averaged lazily: a step updates the
average of the rows it touches only, and every other row catches up in closed
form when it is next touched or when the average is read, so a step costs
nothing per unseen feature, as the sparse optimizers do.
"""

import copy

import torch


class WeightAverage:
    """An averaged copy of a network, updated after every optimizer step.

    After each step, ``average <- decay * average + (1 - decay) * weights``,
    starting from the weights the network has when the average is created.

    Parameters
    ----------
    module : AttentionalFactorizationMachine
        The network being trained; it is not modified.
    decay : float
        Weight of the old average at each step, in (0, 1).
    """

    def __init__(self, module, decay):
        self.decay = decay
        self.module = copy.deepcopy(module).eval()
        self.module.requires_grad_(False)
        self.steps = 0
        # the step up to which each table row's average is up to date
        self.synced_at = torch.zeros(
            module.linear.shape[0], dtype=torch.int64, device=module.bias.device
        )
        self._source = module

    def _pairs(self, sparse):
        own = (
            self.module.sparse_parameters()
            if sparse
            else self.module.dense_parameters()
        )
        theirs = (
            self._source.sparse_parameters()
            if sparse
            else self._source.dense_parameters()
        )
        return zip(own, theirs, strict=True)

    @torch.no_grad()
    def before_step(self, rows):
        """Bring the given table rows up to date; call before the optimizer steps.

        Until now these rows' weights were constant since their last update,
        and k steps of averaging towards a constant w give
        ``w + decay**k * (average - w)``.
        """
        lag = (self.steps - self.synced_at[rows]).to(self._source.bias.dtype)
        remaining = torch.pow(self.decay, lag).unsqueeze(-1)
        for average, weight in self._pairs(sparse=True):
            current = weight[rows]
            average[rows] = current + remaining * (average[rows] - current)
        self.synced_at[rows] = self.steps

    @torch.no_grad()
    def after_step(self, rows):
        """Average in the new weights; ``rows`` are the rows the step touched."""
        self.steps += 1
        for average, weight in self._pairs(sparse=False):
            average.lerp_(weight, 1.0 - self.decay)
        for average, weight in self._pairs(sparse=True):
            average[rows] = torch.lerp(average[rows], weight[rows], 1.0 - self.decay)
        self.synced_at[rows] = self.steps

    @torch.no_grad()
    def sync(self):
        """Bring every row up to date, so that ``self.module`` can predict."""
        lag = (self.steps - self.synced_at).to(self._source.bias.dtype)
        remaining = torch.pow(self.decay, lag).unsqueeze(-1)
        for average, weight in self._pairs(sparse=True):
            average.sub_(weight).mul_(remaining).add_(weight)
        self.synced_at.fill_(self.steps)

    def state(self):
        """A copy of the average: weights, step count and row bookkeeping."""
        return {
            "weights": {
                k: v.detach().clone() for k, v in self.module.state_dict().items()
            },
            "steps": self.steps,
            "synced_at": self.synced_at.clone(),
        }

    def load_state(self, state):
        self.module.load_state_dict(state["weights"])
        self.steps = state["steps"]
        self.synced_at = state["synced_at"].clone().to(self.synced_at.device)

    def to(self, device):
        self.module.to(device)
        self.synced_at = self.synced_at.to(device)
