"""
==========================================
Which field pairs interact: the heatmap
==========================================

:func:`skafm.inspection.interaction_importance` averages each pair's absolute
contribution to the predictions; :class:`skafm.inspection.InteractionDisplay`
draws it per field pair. On data with planted interactions, the planted pairs
come out on top.
"""

# %%
import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from skafm import AFMRegressor
from skafm.datasets import make_interaction_data
from skafm.inspection import InteractionDisplay, explain

X_onehot, y, pairs = make_interaction_data(
    8000,
    n_fields=6,
    n_categories=6,
    interactions=[(0, 3), (2, 5)],
    random_state=0,
)
# back to one categorical column per field, to let a OneHotEncoder name them
X = X_onehot.toarray().reshape(len(y), 6, 6).argmax(axis=2)
columns = ["user", "item", "hour", "weekday", "city", "device"]

import pandas as pd  # noqa: E402

frame = pd.DataFrame(X, columns=columns).astype(str)
model = make_pipeline(
    OneHotEncoder(handle_unknown="ignore"), AFMRegressor(random_state=0)
).fit(frame, y)
print("planted:", [(columns[a], columns[b]) for a, b in pairs])

# %%
# The fields are read from the OneHotEncoder.
display = InteractionDisplay.from_estimator(model, frame, top_n=6)
for field_a, field_b, value in display.importance.top_field_pairs(3):
    print(f"{field_a} x {field_b}: {value:.3f}")

# %%
# One prediction, pair by pair: the attention weights of a row sum to 1 and
# the parts add up to the prediction.
explanation = explain(model, frame.iloc[:1])
print(explanation.rows)
top = explanation.pairs.sort_values(
    "contribution", key=np.abs, ascending=False
)
print(top[["name_a", "name_b", "attention", "contribution"]].head(5))
