"""
========================================================
AFM, plain FM and a linear model on planted interactions
========================================================

:func:`skafm.datasets.make_interaction_data` generates one-hot data whose
target adds a linear effect per category and interaction effects for a few
field pairs only. A linear model misses the interactions; a factorization
machine (``attention=False``) models every pair with equal weight; AFM learns
which pairs matter.
"""

# %%
import matplotlib.pyplot as plt
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split

from skafm import AFMRegressor
from skafm.datasets import make_interaction_data

X, y, pairs = make_interaction_data(
    12000, n_fields=8, n_categories=8, interactions=2, random_state=0
)
print(f"{X.shape[1]} one-hot columns; planted field pairs: {pairs.tolist()}")
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)

models = {
    "linear (Ridge)": Ridge(),
    "FM": AFMRegressor(attention=False, random_state=0),
    "AFM": AFMRegressor(random_state=0),
}
# fit times depend on the machine that built this page; benchmarks/README.md
# has measured ones
scores = {}
for name, model in models.items():
    model.fit(X_train, y_train)
    scores[name] = r2_score(y_test, model.predict(X_test))
    print(f"{name:<15} test R2 {scores[name]:.3f}")

# %%
fig, ax = plt.subplots(figsize=(5, 3))
ax.barh(
    list(scores), list(scores.values()), color=["grey", "tab:blue", "tab:red"]
)
ax.set(xlabel="test R2", xlim=(min(scores.values()) - 0.05, 1))
for i, value in enumerate(scores.values()):
    ax.text(value, i, f" {value:.3f}", va="center")
fig.tight_layout()
