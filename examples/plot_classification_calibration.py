"""
===================================================
Classification: probabilities and their calibration
===================================================

:class:`~skafm.AFMClassifier` fits the log-loss, so its ``predict_proba`` is
meant to be calibrated. A reliability diagram on held-out data checks it,
against a logistic regression on the same one-hot features.
"""

# %%
import matplotlib.pyplot as plt
from sklearn.calibration import CalibrationDisplay
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split

from skafm import AFMClassifier
from skafm.datasets import make_interaction_data

X, y, pairs = make_interaction_data(
    12000, n_fields=8, n_categories=8, task="classification", random_state=0
)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, stratify=y, random_state=0
)
models = {
    "AFM": AFMClassifier(random_state=0),
    "logistic regression": LogisticRegression(max_iter=1000),
}
for name, model in models.items():
    proba = model.fit(X_train, y_train).predict_proba(X_test)[:, 1]
    print(
        f"{name:<20} log-loss {log_loss(y_test, proba):.3f}  "
        f"Brier {brier_score_loss(y_test, proba):.3f}  "
        f"ROC AUC {roc_auc_score(y_test, proba):.3f}"
    )

# %%
fig, ax = plt.subplots(figsize=(5, 5))
for name, model in models.items():
    CalibrationDisplay.from_estimator(
        model, X_test, y_test, n_bins=10, name=name, ax=ax
    )
ax.set_title("Reliability diagram (test data)")
fig.tight_layout()
