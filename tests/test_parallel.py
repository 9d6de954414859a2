"""Thread discipline, parallel search on Dask and Ray, out-of-core training."""

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from sklearn.datasets import dump_svmlight_file
from sklearn.model_selection import GridSearchCV

import skafm._base
from skafm import AFMClassifier, AFMRegressor
from skafm.datasets import iter_svmlight_chunks, make_interaction_data

from .conftest import FAST

# short fits on purpose
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

needs_two_threads = pytest.mark.skipif(
    torch.get_num_threads() < 2, reason="torch already runs on one thread"
)


def torch_threads_scorer():
    """A scorer whose 'score' is the number of threads torch uses right now.

    Built inside a function so that cloudpickle sends it to Dask, Ray and loky
    workers by value rather than by a module path they cannot import.
    """

    def torch_threads(estimator, X, y):
        import torch

        return float(torch.get_num_threads())

    return torch_threads


def thread_recorder():
    """A scoring callable that records torch's thread count at each call.

    Used as the early-stopping scorer, it is called inside fit after every
    epoch, so it sees the limit fit runs under.
    """
    seen = []

    def record(estimator, X, y):
        seen.append(torch.get_num_threads())
        return 0.0

    return seen, record


@pytest.fixture(scope="module")
def small_regression():
    X, y, _ = make_interaction_data(400, n_fields=4, n_categories=4, random_state=0)
    return X, y


def small_search(n_jobs):
    return GridSearchCV(
        AFMRegressor(**{**FAST, "max_iter": 5}),
        {"alpha": [1e-5, 1e-3], "n_factors": [4, 8]},
        cv=2,
        n_jobs=n_jobs,
        scoring={"r2": "r2", "threads": torch_threads_scorer()},
        refit="r2",
    )


# -- thread discipline ---------------------------------------------------------


@needs_two_threads
def test_n_threads_limits_torch_during_fit_and_predict(small_regression, monkeypatch):
    X, y = small_regression
    seen, record = thread_recorder()
    before = torch.get_num_threads()

    model = AFMRegressor(
        **{**FAST, "max_iter": 2}, n_threads=1, early_stopping=True, scoring=record
    ).fit(X, y)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before

    real_predict_raw = skafm._base.predict_raw

    def recording_predict_raw(*args):
        seen.append(("predict", torch.get_num_threads()))
        return real_predict_raw(*args)

    monkeypatch.setattr(skafm._base, "predict_raw", recording_predict_raw)
    model.predict(X)
    assert seen[-1] == ("predict", 1)
    assert torch.get_num_threads() == before


@needs_two_threads
def test_default_n_threads_changes_nothing(small_regression, monkeypatch):
    # the governor may take threads away on a busy machine (tests/test_threads.py)
    monkeypatch.setenv("SKAFM_ADAPTIVE_THREADS", "0")
    X, y = small_regression
    seen, record = thread_recorder()

    AFMRegressor(**{**FAST, "max_iter": 2}, early_stopping=True, scoring=record).fit(
        X, y
    )
    assert set(seen) == {torch.get_num_threads()}


def test_n_threads_is_an_upper_bound_never_a_raise(small_regression):
    from threadpoolctl import threadpool_limits

    X, y = small_regression
    seen, record = thread_recorder()

    with threadpool_limits(limits=1, user_api="openmp"):
        AFMRegressor(
            **{**FAST, "max_iter": 2},
            n_threads=64,
            early_stopping=True,
            scoring=record,
        ).fit(X, y)
    assert set(seen) == {1}


def test_grid_search_workers_use_their_share_of_the_cores(small_regression):
    X, y = small_regression
    search = small_search(n_jobs=2).fit(X, y)
    # joblib's process workers get cpu_count // n_jobs threads each
    expected = max(joblib.cpu_count() // 2, 1)
    assert_allclose(search.cv_results_["mean_test_threads"], expected)
    assert_allclose(search.cv_results_["std_test_threads"], 0)


@needs_two_threads
def test_threading_backend_with_n_threads_one(small_regression):
    X, y = small_regression
    seen, record = thread_recorder()

    search = GridSearchCV(
        AFMRegressor(
            **{**FAST, "max_iter": 2},
            n_threads=1,
            early_stopping=True,
            scoring=record,
        ),
        {"alpha": [1e-5, 1e-3]},
        cv=2,
        n_jobs=2,
    )
    with joblib.parallel_config(backend="threading"):
        search.fit(X, y)
    # every epoch of the 4 fits and the refit, each in a thread of its own
    assert len(seen) == 5 * 2
    assert set(seen) == {1}


# -- Dask ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_grid_search_on_dask_matches_local(small_regression, dask_client):
    X, y = small_regression
    local = small_search(n_jobs=1).fit(X, y)
    with joblib.parallel_config(backend="dask"):
        on_dask = small_search(n_jobs=-1).fit(X, y)
    assert on_dask.best_params_ == local.best_params_
    assert_allclose(
        on_dask.cv_results_["mean_test_r2"],
        local.cv_results_["mean_test_r2"],
        rtol=1e-4,
    )
    # Dask's nanny starts workers with OMP_NUM_THREADS=1
    assert_allclose(on_dask.cv_results_["mean_test_threads"], 1)
    assert_allclose(on_dask.predict(X), local.predict(X), rtol=1e-4, atol=1e-5)


def test_incremental_on_dask_matches_local_partial_fit(dask_client):
    da = pytest.importorskip("dask.array")
    wrappers = pytest.importorskip("dask_ml.wrappers")
    X, y, _ = make_interaction_data(
        2000, n_fields=5, n_categories=4, task="classification", random_state=0
    )
    chunk = 500
    # a dask array whose blocks are scipy CSR matrices, never densified
    X_dask = da.from_array(X, chunks=(chunk, X.shape[1]), asarray=False)
    y_dask = da.from_array(y, chunks=chunk)
    params = dict(FAST, n_factors=4)

    incremental = wrappers.Incremental(AFMClassifier(**params), shuffle_blocks=False)
    incremental.fit(X_dask, y_dask, classes=[0, 1])

    local = AFMClassifier(**params)
    for start in range(0, X.shape[0], chunk):
        stop = start + chunk
        local.partial_fit(X[start:stop], y[start:stop], classes=[0, 1])

    fitted = incremental.estimator_
    assert fitted.t_ == local.t_ == X.shape[0]
    assert_allclose(fitted.predict_proba(X), local.predict_proba(X), atol=1e-6)
    assert_allclose(
        incremental.predict_proba(X_dask).compute(), local.predict_proba(X), atol=1e-6
    )


# -- Ray -----------------------------------------------------------------------


def test_grid_search_on_ray_matches_local(small_regression):
    ray = pytest.importorskip("ray")
    from ray.util.joblib import register_ray

    X, y = small_regression
    local = small_search(n_jobs=1).fit(X, y)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        register_ray()
        with joblib.parallel_config(backend="ray"):
            on_ray = small_search(n_jobs=2).fit(X, y)
    finally:
        ray.shutdown()
    assert on_ray.best_params_ == local.best_params_
    assert_allclose(
        on_ray.cv_results_["mean_test_r2"], local.cv_results_["mean_test_r2"], rtol=1e-4
    )
    # Ray runs one-CPU tasks with OMP_NUM_THREADS=1
    assert_allclose(on_ray.cv_results_["mean_test_threads"], 1)


# -- streaming a libFM / svmlight file -----------------------------------------


@pytest.fixture
def libfm_file(tmp_path):
    X, y, _ = make_interaction_data(
        600, n_fields=4, n_categories=5, task="classification", random_state=3
    )
    y = np.where(y == 1, 1, -1)
    path = str(tmp_path / "train.libfm")
    dump_svmlight_file(X, y, path, zero_based=True)
    return path, X, y


@pytest.mark.parametrize("chunk_bytes", [1, 97, 4096, 10**9])
def test_svmlight_chunks_partition_the_file(libfm_file, chunk_bytes):
    path, X, y = libfm_file
    chunks = list(iter_svmlight_chunks(path, X.shape[1], chunk_bytes=chunk_bytes))
    assert all(part.shape[1] == X.shape[1] for part, _ in chunks)
    assert_allclose(np.concatenate([labels for _, labels in chunks]), y)
    stacked = np.vstack([part.toarray() for part, _ in chunks])
    assert_allclose(stacked, X.toarray())


def test_streaming_partial_fit_recipe(libfm_file):
    path, X, y = libfm_file
    streamed = AFMClassifier(**FAST)
    in_memory = AFMClassifier(**FAST)
    for _ in range(2):
        start = 0
        for X_chunk, y_chunk in iter_svmlight_chunks(
            path, X.shape[1], chunk_bytes=4096
        ):
            streamed.partial_fit(X_chunk, y_chunk, classes=[-1, 1])
            stop = start + X_chunk.shape[0]
            in_memory.partial_fit(X[start:stop], y[start:stop], classes=[-1, 1])
            start = stop
        assert start == X.shape[0]
    assert streamed.t_ == 2 * X.shape[0]
    assert_allclose(streamed.predict_proba(X), in_memory.predict_proba(X), atol=1e-6)
    assert streamed.score(X, y) > 0.6
