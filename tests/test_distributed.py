"""Data-parallel training: fit_distributed against local fits.

Each fit starts two worker processes (gloo over loopback, one thread each).
"""

import os
import pickle
import time

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose

from skafm import AFMClassifier, AFMRegressor
from skafm.distributed import WorkerError, fit_distributed

pytest.importorskip("torch.distributed")

# dropout off: the only randomness left is the shared batch order and
# initial weights, so two workers with batch b make the steps of batch 2b,
# up to the rounding of sums taken in two parts. Two epochs: the attention
# bias's true gradient is nearly zero (the softmax over a row's pairs does
# not change when all scores shift alike), so Adam and Adagrad, which
# normalise each gradient, turn rounding noise there into steps of about the
# learning rate, and fits that differ only in rounding drift apart by
# about 1e-4 in four epochs.
PARAMS = dict(
    n_factors=8,
    attention_size=8,
    dropout=0.0,
    max_iter=2,
    random_state=0,
    early_stopping=False,
    n_threads=1,
)
PER_WORKER_BATCH = 32


def sparse_data(task, n_rows=1200, n_features=40, seed=0):
    rng = np.random.RandomState(seed)
    X = sp.random(n_rows, n_features, density=0.15, format="csr", random_state=rng)
    X.data[:] = rng.uniform(0.5, 1.5, X.nnz)
    score = np.asarray(X @ rng.normal(size=n_features)).ravel()
    score += np.asarray(X[:, 0].toarray() * X[:, 1].toarray()).ravel()
    if task == "regression":
        return X, score + rng.normal(0, 0.1, n_rows)
    if task == "binary":
        return X, np.where(score > np.median(score), "yes", "no")
    return X, np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))


def local_and_distributed(Estimator, X, y, fit_params=None, **params):
    params = {**PARAMS, **params}
    fit_params = fit_params or {}
    local = Estimator(batch_size=2 * PER_WORKER_BATCH, **params).fit(X, y, **fit_params)
    distributed = fit_distributed(
        Estimator(batch_size=PER_WORKER_BATCH, **params),
        X,
        y,
        n_workers=2,
        **fit_params,
    )
    return local, distributed


def test_two_workers_train_the_regressor_a_local_fit_with_twice_the_batch_trains():
    X, y = sparse_data("regression")
    # init="fm": both phases, and the FM the AFM starts from, agree
    local, distributed = local_and_distributed(AFMRegressor, X, y, init="fm")
    assert_allclose(distributed.predict(X), local.predict(X), atol=1e-5)
    assert_allclose(distributed.loss_curve_, local.loss_curve_, rtol=1e-5)
    assert distributed.t_ == local.t_ == 2 * 2 * X.shape[0]
    assert distributed.phases_ == local.phases_
    # a normal estimator afterwards
    again = pickle.loads(pickle.dumps(distributed))
    assert_allclose(again.predict(X[:10]), distributed.predict(X[:10]))
    assert distributed.explain(X[:3]).rows.shape[0] == 3


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_two_workers_train_the_classifier_a_local_fit_with_twice_the_batch_trains(
    task,
):
    X, y = sparse_data(task)
    local, distributed = local_and_distributed(AFMClassifier, X, y, init="random")
    assert_allclose(distributed.predict_proba(X), local.predict_proba(X), atol=1e-5)
    assert_array_equal_labels(distributed, local, X)


def assert_array_equal_labels(distributed, local, X):
    np.testing.assert_array_equal(distributed.classes_, local.classes_)
    np.testing.assert_array_equal(distributed.predict(X), local.predict(X))


def test_workers_without_rows_in_a_batch_still_take_part_in_its_step():
    # unshuffled, the first half of the batches holds only worker 0's rows
    # and the second half only worker 1's
    X, y = sparse_data("regression")
    local, distributed = local_and_distributed(
        AFMRegressor, X, y, init="random", shuffle=False, attention=False
    )
    assert_allclose(distributed.predict(X), local.predict(X), atol=1e-5)
    # the attention penalty, which worker 0 adds whether or not it has rows
    # in the batch, counts once per step: W shrinks as in the local fit
    # (one epoch: the attention bias's noise, see PARAMS, reaches W later)
    local, distributed = local_and_distributed(
        AFMRegressor,
        X,
        y,
        init="random",
        shuffle=False,
        attention_alpha=0.1,
        optimizer="adam",
        learning_rate_init=0.01,
        max_iter=1,
    )
    assert_allclose(
        distributed.module_.attention_weight.detach(),
        local.module_.attention_weight.detach(),
        atol=1e-6,
    )
    assert_allclose(distributed.loss_curve_, local.loss_curve_, rtol=1e-5)


def test_sample_weights_early_stopping_and_averaging_agree_with_a_local_fit():
    X, y = sparse_data("regression")
    X_val, y_val = sparse_data("regression", n_rows=300, seed=1)
    weight = np.random.RandomState(2).uniform(0.1, 3.0, X.shape[0])
    fit_params = dict(sample_weight=weight, X_val=X_val, y_val=y_val)
    local, distributed = local_and_distributed(
        AFMRegressor,
        X,
        y,
        fit_params,
        init="random",
        early_stopping=True,
        average_window=2,
        max_iter=8,
        n_iter_no_change=2,
    )
    assert_allclose(distributed.validation_scores_, local.validation_scores_, rtol=1e-5)
    assert distributed.n_iter_ == local.n_iter_
    assert distributed.best_validation_score_ == max(distributed.validation_scores_)
    assert_allclose(distributed.predict(X), local.predict(X), atol=1e-5)


def test_a_worker_that_raises_ends_the_fit_with_its_error_and_keeps_the_model():
    X, y = sparse_data("regression")
    model = AFMRegressor(**PARAMS).fit(X, y)
    before = model.predict(X)
    X_bad = X.copy().tolil()
    X_bad[X.shape[0] - 1, 0] = np.nan  # in the second worker's rows only
    start = time.perf_counter()
    with pytest.raises(ValueError, match="NaN") as raised:
        fit_distributed(model, X_bad.tocsr(), y, n_workers=2, timeout=120)
    # the worker that waited for it is stopped, not left to time out
    assert time.perf_counter() - start < 60
    assert "Worker 1 of 2" in str(raised.value.__cause__)
    assert_allclose(model.predict(X), before)


class ExitInTheSecondWorker:
    """A scorer whose call ends the process of worker 1 (as a crash would)."""

    def __call__(self, estimator, X, y):
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() == 1:
            os._exit(3)
        return 0.0


def test_a_worker_that_dies_ends_the_fit_with_an_error():
    X, y = sparse_data("regression")
    model = AFMRegressor(**{**PARAMS, "early_stopping": True})
    model.set_params(scoring=ExitInTheSecondWorker())
    with pytest.raises(WorkerError, match="Worker 1 of 2 died with exit code 3"):
        fit_distributed(model, X, y, n_workers=2, timeout=120)
    assert not hasattr(model, "module_")


def test_arguments_that_cannot_work_are_refused():
    X, y = sparse_data("regression", n_rows=50)
    with pytest.raises(ValueError, match="fewer than n_workers=64"):
        fit_distributed(AFMRegressor(), X, y, n_workers=64)
    with pytest.raises(ValueError, match="backend must be one of"):
        fit_distributed(AFMRegressor(), X, y, n_workers=2, backend="mpi")
    with pytest.raises(ValueError, match="needs the Dask client"):
        fit_distributed(AFMRegressor(), X, y, n_workers=2, backend="dask")
    with pytest.raises(ValueError, match="n_factors"):
        fit_distributed(AFMRegressor(n_factors=0), X, y, n_workers=2)


def local_fit(Estimator, X, y, **params):
    """What two workers with PER_WORKER_BATCH train (tested above)."""
    return Estimator(**{**PARAMS, **params}, batch_size=2 * PER_WORKER_BATCH).fit(X, y)


def test_the_ray_backend_trains_the_model_of_a_local_fit():
    ray = pytest.importorskip("ray")
    X, y = sparse_data("binary", n_rows=600)
    params = dict(PARAMS, batch_size=PER_WORKER_BATCH, init="random")
    local = local_fit(AFMClassifier, X, y, init="random")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = fit_distributed(
            AFMClassifier(**params), X, y, n_workers=2, backend="ray"
        )
    finally:
        ray.shutdown()
    assert_allclose(on_ray.predict_proba(X), local.predict_proba(X), atol=1e-5)


def test_the_dask_backend_trains_on_blocks_left_on_the_cluster():
    distributed = pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    X, y = sparse_data("regression", n_rows=600)
    params = dict(PARAMS, batch_size=PER_WORKER_BATCH, init="random")
    local = local_fit(AFMRegressor, X, y, init="random")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    try:
        # blocks of scipy CSR matrices, persisted on the workers
        X_dask = da.from_array(X, chunks=(150, X.shape[1]), asarray=False).persist()
        y_dask = da.from_array(y, chunks=150).persist()
        on_dask = fit_distributed(
            AFMRegressor(**params),
            X_dask,
            y_dask,
            n_workers=2,
            backend="dask",
            client=client,
        )
    finally:
        client.close()
        cluster.close()
    assert_allclose(on_dask.predict(X), local.predict(X), atol=1e-5)


TORCHRUN_SCRIPT = """
import sys

import numpy as np
import torch.distributed as dist

from skafm import AFMRegressor
from skafm.distributed import fit_shard

sys.path.insert(0, {tests!r})
from test_distributed import PARAMS, PER_WORKER_BATCH, sparse_data

dist.init_process_group("gloo")
rank, size = dist.get_rank(), dist.get_world_size()
X, y = sparse_data("regression")
rows = np.array_split(np.arange(X.shape[0]), size)[rank]  # this process's rows
model = AFMRegressor(batch_size=PER_WORKER_BATCH, **PARAMS)
fit_shard(model, X[rows], y[rows])
if rank == 0:
    np.save({out!r}, model.predict(X))
dist.destroy_process_group()
"""


def test_fit_shard_under_torchrun_trains_the_model_of_a_local_fit(tmp_path):
    import subprocess
    import sys

    X, y = sparse_data("regression")
    expected = local_fit(AFMRegressor, X, y).predict(X)
    script = tmp_path / "train.py"
    out = tmp_path / "predictions.npy"
    tests = os.path.dirname(os.path.abspath(__file__))
    script.write_text(TORCHRUN_SCRIPT.format(tests=tests, out=str(out)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--standalone",
            str(script),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_allclose(np.load(out), expected, atol=1e-5)


def test_fit_shard_needs_a_process_group():
    from skafm.distributed import fit_shard

    X, y = sparse_data("regression", n_rows=50)
    with pytest.raises(RuntimeError, match="init_process_group"):
        fit_shard(AFMRegressor(), X, y)
