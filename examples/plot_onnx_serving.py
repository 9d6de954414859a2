"""
=========================================
Serving a Pipeline with ONNX Runtime
=========================================

A Pipeline that one-hot encodes a DataFrame's columns and ends in an AFM
model exports to one ONNX graph with skl2onnx, once ``skafm.onnx`` is
imported. The graph takes the raw columns, strings and numbers, and
returns what ``predict_proba`` and ``predict`` return; ONNX Runtime runs
it without Python's scikit-learn, torch or skafm.
"""

# %%
import numpy as np
import onnxruntime as ort
import pandas as pd
from skl2onnx import to_onnx
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import skafm.onnx  # noqa: F401  (registers skafm's converters)
from skafm import AFMClassifier

rng = np.random.default_rng(0)
n = 5000
frame = pd.DataFrame(
    {
        "user": rng.choice([f"u{i}" for i in range(50)], n),
        "item": rng.choice([f"i{i}" for i in range(30)], n),
        "hour": rng.choice(["morning", "noon", "evening", "night"], n),
        "price": rng.gamma(2.0, 5.0, n),
    }
)
# clicks depend on the pair (user, item) and on the hour
affinity = rng.normal(size=(50, 30))
user = frame.user.str[1:].astype(int)
item = frame.item.str[1:].astype(int)
logit = (
    1.5 * affinity[user, item] + (frame.hour == "evening") - 0.05 * frame.price
)
y = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "click", "skip")

encode = ColumnTransformer(
    [
        (
            "ids",
            OneHotEncoder(handle_unknown="ignore"),
            ["user", "item", "hour"],
        ),
        ("price", StandardScaler(), ["price"]),
    ]
)
pipeline = make_pipeline(encode, AFMClassifier(random_state=0))
pipeline.fit(frame, y)

# %%
# Export: skl2onnx reads one input per column from a sample row;
# ``zipmap=False`` gives the probabilities as an (n, n_classes) tensor.
graph = to_onnx(
    pipeline,
    frame[:1],
    options={id(pipeline[-1]): {"zipmap": False}},
)
session = ort.InferenceSession(
    graph.SerializeToString(), providers=["CPUExecutionProvider"]
)
print([(i.name, i.type) for i in session.get_inputs()])

# %%
# Score new rows, one of them with a user never seen in training, and
# compare with the Pipeline itself.
new = frame.sample(5, random_state=1).reset_index(drop=True)
new.loc[0, "user"] = "someone new"
feeds = {
    "user": new[["user"]].to_numpy(),
    "item": new[["item"]].to_numpy(),
    "hour": new[["hour"]].to_numpy(),
    "price": new[["price"]].to_numpy(),
}
label, proba = session.run(None, feeds)
print("onnxruntime:", label, proba[:, 1].round(4))
print(
    "Pipeline:   ",
    pipeline.predict(new),
    pipeline.predict_proba(new)[:, 1].round(4),
)
print("largest difference:", np.abs(proba - pipeline.predict_proba(new)).max())
