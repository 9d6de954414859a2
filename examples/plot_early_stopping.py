"""
==========================================
Early stopping and the loss curves
==========================================

With early stopping, a validation part of the training data is scored after
every epoch, training stops once the score stops improving and the best
epoch's weights are restored. ``loss_curve_`` and ``validation_scores_`` show
what happened.
"""

# %%
import matplotlib.pyplot as plt
from sklearn.model_selection import train_test_split

from skafm import AFMRegressor
from skafm.datasets import make_interaction_data

X, y, _ = make_interaction_data(
    3000, n_fields=8, n_categories=8, noise=0.5, random_state=0
)
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)

# %%
# No regularization on purpose, so that the model can overfit the noisy
# target; without early stopping it trains for all ``max_iter`` epochs.
common = dict(
    init="random",  # one training phase, so that the curves show it all
    average_window=None,  # predict with the last weights: early stopping alone
    dropout=0.0,
    alpha=0.0,
    n_factors=64,
    learning_rate_init=0.02,
    max_iter=60,
    random_state=0,
)
stopped = AFMRegressor(early_stopping=True, n_iter_no_change=5, **common)
stopped.fit(X_train, y_train)
full = AFMRegressor(early_stopping=False, tol=0.0, **common).fit(
    X_train, y_train
)
for name, model in [("early stopping", stopped), ("no stopping", full)]:
    score = model.score(X_test, y_test)
    print(f"{name:<15} {model.n_iter_} epochs, test R2 {score:.3f}")

# %%
# The validation score is the negative validation MSE (``scoring="loss"``).
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(full.loss_curve_, label="training loss (no early stopping)")
ax.plot(stopped.loss_curve_, label="training loss (early stopping)")
ax.plot(
    [-score for score in stopped.validation_scores_],
    label="validation loss (early stopping)",
)
best = max(range(stopped.n_iter_), key=stopped.validation_scores_.__getitem__)
ax.axvline(best, color="grey", linestyle=":", label="restored epoch")
ax.set(xlabel="epoch", ylabel="MSE", yscale="log")
ax.legend()
fig.tight_layout()
