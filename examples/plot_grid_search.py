"""
==========================================
Tuning AFM with GridSearchCV
==========================================

skafm's parameters are plain values, so scikit-learn's searches work as for
any estimator, including inside a pipeline (``step__parameter`` names) and
with ``n_jobs`` (each worker process gets its share of the cores).
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.model_selection import GridSearchCV, train_test_split

from skafm import AFMRegressor
from skafm.datasets import make_interaction_data

X, y, _ = make_interaction_data(
    4000, n_fields=6, n_categories=6, random_state=0
)
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)

grid = {"dropout": [0.0, 0.3, 0.6], "n_factors": [4, 16, 32]}
search = GridSearchCV(
    AFMRegressor(max_iter=30, random_state=0), grid, cv=3, n_jobs=2
).fit(X_train, y_train)
print("best:", search.best_params_, f"CV R2 {search.best_score_:.3f}")
print(
    f"test R2 of the refitted best model: {search.score(X_test, y_test):.3f}"
)

# %%
results = pd.DataFrame(search.cv_results_)
table = results.pivot(
    index="param_dropout", columns="param_n_factors", values="mean_test_score"
)
fig, ax = plt.subplots(figsize=(5, 3.5))
image = ax.imshow(table.to_numpy(), cmap="viridis")
ax.set(
    xticks=np.arange(table.shape[1]),
    xticklabels=table.columns,
    yticks=np.arange(table.shape[0]),
    yticklabels=table.index,
    xlabel="n_factors",
    ylabel="dropout",
    title="mean CV R2",
)
for (i, j), value in np.ndenumerate(table.to_numpy()):
    ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="white")
fig.colorbar(image)
fig.tight_layout()
