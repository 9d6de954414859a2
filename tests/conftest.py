import numpy as np
import pytest

import skafm._native
from skafm.datasets import make_interaction_data

# Small, quick settings for tests that only need a trained model, not a good one.
FAST = dict(
    n_factors=8,
    attention_size=8,
    max_iter=15,
    batch_size=64,
    # Adam at 0.01 is fast enough for a few epochs on small data (the
    # regressor's default Adagrad at 0.01 is not)
    optimizer="adam",
    learning_rate_init=0.01,
    random_state=0,
    init="random",  # one training phase; init="fm" has tests of its own
)


@pytest.fixture(scope="session")
def planted_regression():
    """One-hot data whose target has two interacting field pairs."""
    X, y, pairs = make_interaction_data(
        3000, n_fields=6, n_categories=5, interactions=2, random_state=0
    )
    return X, y, pairs


@pytest.fixture(scope="session")
def planted_classification():
    X, y, pairs = make_interaction_data(
        1500,
        n_fields=6,
        n_categories=5,
        interactions=2,
        task="classification",
        random_state=1,
    )
    return X, y, pairs


@pytest.fixture
def rng():
    return np.random.RandomState(0)


@pytest.fixture
def kernels():
    """The fused CPU kernels; the test is skipped where they cannot be built."""
    built = skafm._native.kernels()
    if built is None:
        pytest.skip("the fused kernels cannot be built here")
    return built


@pytest.fixture
def torch_ops(monkeypatch):
    """Training runs PyTorch operations instead of the fused kernels."""
    monkeypatch.setattr(skafm._native, "kernels", lambda: None)


@pytest.fixture(params=["fused", "torch"])
def training_ops(request):
    """Training runs the fused CPU kernels, or PyTorch operations."""
    request.getfixturevalue("kernels" if request.param == "fused" else "torch_ops")
    return request.param
