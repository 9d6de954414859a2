"""
==========================================
Quickstart: one-hot encoding and AFM
==========================================

The usual way to use skafm: categorical columns go through a
:class:`~sklearn.preprocessing.OneHotEncoder` into an
:class:`~skafm.AFMRegressor`, both in one
:class:`~sklearn.pipeline.Pipeline`. The target depends on an interaction of
two of the columns, which a linear model on the same encoding cannot capture.
"""

# %%
# Data: three categorical columns, and a target driven by the combination of
# the first two.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from skafm import AFMRegressor

rng = np.random.RandomState(0)
n_samples = 6000
X = np.column_stack(
    [
        rng.choice(
            ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], n_samples
        ),
        rng.choice(["morning", "noon", "evening", "night"], n_samples),
        rng.choice(["phone", "tablet", "laptop"], n_samples),
    ]
)
weekend = np.isin(X[:, 0], ["sat", "sun"])
late = np.isin(X[:, 1], ["evening", "night"])
y = (
    2.0 * (weekend & late)
    - 1.0 * (~weekend & late)
    + 0.5 * (X[:, 2] == "tablet")
    + rng.normal(0, 0.1, n_samples)
)
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)

# %%
# Fit the pipeline. The encoder's sparse output is passed on as is: skafm
# never densifies it.
afm = make_pipeline(
    OneHotEncoder(handle_unknown="ignore"), AFMRegressor(random_state=0)
).fit(X_train, y_train)
linear = make_pipeline(OneHotEncoder(handle_unknown="ignore"), Ridge()).fit(
    X_train, y_train
)
print(f"AFM   test R2: {afm.score(X_test, y_test):.3f}")
print(f"Ridge test R2: {linear.score(X_test, y_test):.3f}")

# %%
# Predictions against the truth: the linear model's predictions spread over
# each true level, the AFM's sit on it.
fig, axes = plt.subplots(1, 2, figsize=(8, 3.5), sharey=True)
for ax, (name, model) in zip(
    axes, [("Ridge", linear), ("AFM", afm)], strict=True
):
    ax.scatter(y_test, model.predict(X_test), s=4, alpha=0.3)
    ax.set(title=name, xlabel="true y")
axes[0].set_ylabel("predicted y")
fig.tight_layout()
