"""The fused CPU kernels: their build, and their results against PyTorch's."""

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import skafm._native as native
from skafm import AFMClassifier, AFMRegressor
from skafm._batching import as_active_features, pad_rows
from skafm._nn import ops
from skafm._nn.functional import every_pair, pair_selectors, pairs_of
from skafm._nn.fused import FusedAttentionPooling, FusedDropout
from skafm._nn.grouping import ungrouped_training_pairs
from skafm._nn.pooling import AttentionPooling, PairwiseAttentionPooling
from skafm._threads import thread_limit
from skafm.datasets import make_interaction_data
from skafm.exceptions import KernelBuildWarning

from .conftest import FAST


@pytest.fixture
def fresh_build_state(monkeypatch, tmp_path):
    """An empty build cache and no kernels loaded by earlier calls."""
    monkeypatch.setenv(native.CACHE_DIR, str(tmp_path))
    native.kernels.cache_clear()
    yield tmp_path
    native.kernels.cache_clear()


def test_kernels_build_where_a_compiler_is_found():
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None or not native.enabled():
        pytest.skip(f"no compiler {compiler!r} here, or the kernels are off")
    assert native.kernels() is not None


def network(k, t, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(t, k, generator=generator, dtype=dtype)
    b = torch.randn(t, generator=generator, dtype=dtype)
    query = torch.randn(t, 1, generator=generator, dtype=dtype)
    return [p.requires_grad_() for p in (W, b, query)]


def one_hot_batch(n_rows=60, n_fields=5, seed=0):
    """One-hot rows of 2-category fields (pairs repeat); some rows are short."""
    rng = np.random.RandomState(seed)
    columns = 2 * np.arange(n_fields) + rng.randint(0, 2, size=(n_rows, n_fields))
    dense = np.zeros((n_rows, 2 * n_fields))
    np.put_along_axis(dense, columns, 1.0, axis=1)
    dense[:3, columns[0, 1:]] = 0.0  # rows with one active feature: no pairs
    dense[3:10, columns[0, 3:]] = 0.0
    return pad_rows(as_active_features(sp.csr_matrix(dense)), np.arange(n_rows))


@pytest.mark.parametrize("with_dropout", [False, True])
@pytest.mark.parametrize("through_inverse", [False, True])
def test_fused_pooling_gradients_match_numerical_gradients(
    kernels, with_dropout, through_inverse
):
    generator = torch.Generator().manual_seed(0)
    n_rows, width, k, t = 4, 5, 3, 2
    scaled = torch.randn(n_rows, width, k, dtype=torch.float64, generator=generator)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
        dtype=torch.bool,
    )
    pair_mask = pairs_of(mask)
    if through_inverse:
        # every pair its own group, read through an identity inverse
        groups = ungrouped_training_pairs(n_rows, width, scaled.device)
        pairs = (groups.left, groups.right, groups.inverse, groups.n_groups)
    else:
        pairs = every_pair(n_rows, width, scaled.device)
    keep = None
    if with_dropout:
        keep = (torch.rand(pair_mask.shape, generator=generator) > 0.3) / 0.7
        keep = keep.double()

    def pooled(scaled, W, b, query):
        return FusedAttentionPooling.apply(
            scaled, pair_mask, *pairs, W, b, query, keep, kernels
        )

    inputs = (scaled.requires_grad_(), *network(k, t, torch.float64))
    assert torch.autograd.gradcheck(pooled, inputs)


def pooled_and_gradients(pool, scaled, structure, network_parameters):
    scaled = scaled.detach().requires_grad_()
    pooled = pool(scaled, *structure, *network_parameters)
    weights = torch.linspace(-1, 1, pooled.numel()).view(pooled.shape)
    gradients = torch.autograd.grad(
        (pooled * weights).sum(), (scaled, *network_parameters)
    )
    return [pooled, *gradients]


def test_fused_pooling_matches_pytorch_operations(kernels):
    batch = one_hot_batch()
    n_rows, width = batch.index.shape
    k, t = 8, 6
    embedding = torch.randn(20, k, generator=torch.Generator().manual_seed(1))
    scaled = embedding[batch.index] * batch.value.unsqueeze(-1)
    pair_mask = pairs_of(batch.mask)
    keep = (
        torch.rand(pair_mask.shape, generator=torch.Generator().manual_seed(2)) > 0.3
    ) / 0.7
    parameters = network(k, t, torch.float32)
    groups = ops.group_training_pairs(batch.index, batch.value)
    assert groups is not None and groups.n_groups < 0.5 * len(groups.inverse)
    grouped = (groups.left, groups.right, groups.inverse, groups.n_groups)
    ungrouped = every_pair(n_rows, width, scaled.device)
    selectors = pair_selectors(width, scaled.device)

    def fused(scaled, *args):
        *structure, W, b, query = args
        return FusedAttentionPooling.apply(
            scaled, pair_mask, *structure, W, b, query, keep, kernels
        )

    def with_torch(pool):
        def run(scaled, *args):
            *structure, W, b, query = args
            return pool.apply(scaled, pair_mask, *structure, W, b, query, keep)

        return run

    for fused_structure, pool, structure in [
        (grouped, AttentionPooling, (groups,)),
        (ungrouped, PairwiseAttentionPooling, selectors),
    ]:
        got = pooled_and_gradients(fused, scaled, fused_structure, parameters)
        want = pooled_and_gradients(with_torch(pool), scaled, structure, parameters)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def fused_runner(kernels, n_rows=200):
    """Pooled outputs and gradients of a one-hot batch on the fused path."""
    batch = one_hot_batch(n_rows=n_rows, n_fields=6)
    k, t = 16, 8
    embedding = torch.randn(20, k, generator=torch.Generator().manual_seed(1))
    scaled = embedding[batch.index] * batch.value.unsqueeze(-1)
    pair_mask = pairs_of(batch.mask)
    parameters = network(k, t, torch.float32)

    def run(structure, rows=slice(None)):
        return pooled_and_gradients(
            lambda scaled, *args: FusedAttentionPooling.apply(
                scaled, pair_mask[rows], *args[:4], *args[4:], None, kernels
            ),
            scaled[rows],
            structure,
            parameters,
        )

    groups = ops.group_training_pairs(batch.index, batch.value)
    grouped = (groups.left, groups.right, groups.inverse, groups.n_groups)
    return run, grouped, batch.index.shape[1]


@pytest.mark.parametrize("padded", [False, True])
def test_hashed_groups_are_the_sorted_groups_by_first_occurrence(
    kernels, monkeypatch, padded
):
    batch = one_hot_batch(n_rows=120, n_fields=6)
    if not padded:
        full = batch.mask.all(1)
        batch = type(batch)(batch.index[full], batch.value[full], batch.mask[full])
    assert bool(batch.mask.all()) != padded
    hashed = ops.group_training_pairs(batch.index, batch.value)
    monkeypatch.setattr(native, "kernels", lambda: None)
    by_sort = ops.group_training_pairs(batch.index, batch.value)
    n = by_sort.n_groups
    assert hashed.n_groups == n
    # one sorted group for each hashed group, and the same occurrences in it
    to_sorted = torch.full((n,), -1)
    to_sorted[hashed.inverse] = by_sort.inverse
    assert torch.equal(to_sorted[hashed.inverse], by_sort.inverse)
    assert len(set(to_sorted.tolist())) == n
    # numbered by first occurrence, whose positions they carry
    occurrences = torch.arange(len(by_sort.inverse))
    first_of_sorted = torch.full((n,), len(occurrences)).scatter_reduce_(
        0, by_sort.inverse, occurrences, "amin"
    )
    first = first_of_sorted[to_sorted]
    assert torch.all(first[1:] > first[:-1])
    assert torch.equal(hashed.left[:n], by_sort.left[to_sorted])
    assert torch.equal(hashed.right[:n], by_sort.right[to_sorted])
    assert len(hashed.left) == len(by_sort.left)
    assert torch.all(hashed.left[n:] == 0) and torch.all(hashed.right[n:] == 1)


def declining_batches():
    rng = np.random.RandomState(0)
    real_valued = sp.random(40, 12, density=0.5, random_state=rng, format="csr")
    # one-hot, 3 fields of 20 categories: entries repeat, pairs rarely
    columns = 20 * np.arange(3) + rng.randint(0, 20, size=(200, 3))
    large_fields = np.zeros((200, 60))
    np.put_along_axis(large_fields, columns, 1.0, axis=1)
    valued = large_fields * rng.choice([1.0, 2.0], size=large_fields.shape)
    # 2 fields of 10: the bound (100 of 150 pairs) lets the pairs be
    # grouped, but most of them (about 78) are distinct
    columns = 10 * np.arange(2) + rng.randint(0, 10, size=(150, 2))
    mid_fields = np.zeros((150, 20))
    np.put_along_axis(mid_fields, columns, 1.0, axis=1)
    for X in (real_valued, large_fields, valued, mid_fields):
        X = as_active_features(sp.csr_matrix(X))
        yield pad_rows(X, np.arange(X.shape[0]))
    yield one_hot_batch()


def test_hashed_grouping_declines_where_the_sorted_one_does(kernels, monkeypatch):
    batches = list(declining_batches())
    hashed = [ops.group_training_pairs(b.index, b.value) for b in batches]
    monkeypatch.setattr(native, "kernels", lambda: None)
    by_sort = [ops.group_training_pairs(b.index, b.value) for b in batches]
    assert [g is None for g in hashed] == [g is None for g in by_sort]
    assert [g is None for g in hashed] == [True, True, True, True, False]


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs one thread")
def test_fused_pooling_does_not_depend_on_the_number_of_threads(kernels):
    run, grouped, _ = fused_runner(kernels)
    several = run(grouped)
    # the limit skafm applies for n_threads (torch.set_num_threads would
    # change the process's setting for every later test)
    with thread_limit(1):
        assert torch.get_num_threads() == 1
        one = run(grouped)
    for a, b in zip(one, several, strict=True):
        assert torch.equal(a, b)


def test_fused_pooling_of_a_row_does_not_depend_on_its_batch_mates(kernels):
    run, grouped, width = fused_runner(kernels)
    pooled = run(grouped)[0]
    # each pair scored on its own, the rows' outputs are the same bits
    assert torch.equal(run(every_pair(200, width, pooled.device))[0], pooled)
    for row in [0, 5, 77, 199]:
        alone = run(every_pair(1, width, pooled.device), slice(row, row + 1))[0]
        assert torch.equal(alone[0], pooled[row])


def seeds_for(n_rows, first=12345):
    return torch.arange(first, first + n_rows)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_fused_dropout_keeps_a_share_of_one_minus_the_rate(kernels, rate):
    x = torch.linspace(1, 2, 200_000).view(1000, 200)
    out = kernels.dropout(x, rate, seeds_for(1000))
    kept = out != 0
    assert abs(kept.double().mean().item() - (1 - rate)) < 0.005
    torch.testing.assert_close(out[kept], x[kept] / (1 - rate))
    # a row's mask is a function of its seed alone
    assert torch.equal(kernels.dropout(x, rate, seeds_for(1000)), out)
    assert torch.equal(kernels.dropout(x[5:9], rate, seeds_for(1000)[5:9]), out[5:9])
    assert not torch.equal(kernels.dropout(x, rate, seeds_for(1000, 1)) != 0, kept)


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs one thread")
def test_fused_dropout_does_not_depend_on_the_number_of_threads(kernels):
    x = torch.randn(500, 200)
    several = kernels.dropout(x, 0.3, seeds_for(500))
    with thread_limit(1):
        assert torch.equal(kernels.dropout(x, 0.3, seeds_for(500)), several)


def test_fused_dropout_gradient_applies_the_same_mask(kernels):
    x = torch.randn(50, 6, dtype=torch.float64, requires_grad=True)
    seeds = seeds_for(50)
    assert torch.autograd.gradcheck(
        lambda x: FusedDropout.apply(x, 0.4, seeds, kernels), (x,)
    )
    out = FusedDropout.apply(x, 0.4, seeds, kernels)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad != 0, out.detach() != 0)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fitted_models_agree_with_and_without_the_kernels(kernels, monkeypatch):
    X, y, _ = make_interaction_data(600, n_fields=5, n_categories=4, random_state=0)
    # without dropout: the kernels draw dropout masks from a stream of their own
    settings = {**FAST, "max_iter": 3, "dropout": 0.0}
    fused = AFMRegressor(**settings).fit(X, y).predict(X)
    monkeypatch.setattr(native, "kernels", lambda: None)
    plain = AFMRegressor(**settings).fit(X, y).predict(X)
    np.testing.assert_allclose(fused, plain, rtol=1e-3, atol=1e-3)


def prediction_problem(n_rows=800):
    """Rows of 0-7 features with non-unit values: repeated and unique pairs."""
    X, y, _ = make_interaction_data(n_rows, n_fields=6, n_categories=30, random_state=0)
    X = X.multiply(np.linspace(0.5, 2.0, X.shape[1])).tocsr()
    rng = np.random.RandomState(1)
    # rows of 0, 1 and 7 features as well as 6
    X = sp.lil_matrix(X)
    X[0, :] = 0
    X[1, 2:] = 0
    X[2, 5] = 1.5
    X[3, 6] = -0.25
    return as_active_features(sp.csr_matrix(X)), y + rng.normal(0, 0.1, n_rows)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("classes", [0, 2, 3])
def test_the_prediction_kernel_computes_the_pytorch_prediction(
    kernels, monkeypatch, classes
):
    X, y = prediction_problem()
    settings = {**FAST, "max_iter": 2, "n_factors": 12, "attention_size": 5}
    if classes:
        model = AFMClassifier(**settings).fit(X, np.arange(len(y)) % classes)
        predict = model.predict_proba
    else:
        model = AFMRegressor(**settings).fit(X, y)
        predict = model.predict
    calls = []
    real = kernels.predict_attention

    class Recording:
        def __getattr__(self, name):
            return getattr(kernels, name)

        def predict_attention(self, *args):
            calls.append(len(args[0]) - 1)
            return real(*args)

    monkeypatch.setattr(ops, "kernels_for", lambda tensor: Recording())
    fused = predict(X)
    assert calls == [X.shape[0]]
    monkeypatch.setattr(ops, "kernels_for", lambda tensor: None)
    plain = predict(X)
    assert not np.array_equal(fused, plain)  # two computations, not one
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_rows_fused_prediction_is_the_same_bits_alone_and_with_any_threads(
    kernels,
):
    X, y = prediction_problem()
    model = AFMRegressor(**{**FAST, "max_iter": 2, "n_factors": 12}).fit(X, y)
    with thread_limit(1):
        together = model.predict(X)
    with thread_limit(2):
        assert np.array_equal(model.predict(X), together)
        # a row alone meets none of the pairs other rows put in the cache
        alone = [model.predict(X[i])[0] for i in range(0, X.shape[0], 37)]
        reversed_rows = model.predict(X[::-1])[::-1]
    np.testing.assert_array_equal(alone, together[::37])
    np.testing.assert_array_equal(reversed_rows, together)


def test_the_prediction_kernel_takes_int32_and_int64_indices_and_float64_data(
    kernels,
):
    X, _ = prediction_problem(200)
    k, t = 8, 20  # t not a whole number of the kernel's blocks of hidden units
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(X.shape[1], k, generator=generator)
    linear = torch.randn(X.shape[1], 1, generator=generator)
    bias = torch.randn(1, generator=generator)
    W, b, query = (p.detach() for p in network(k, t, torch.float32))
    projection = torch.randn(k, 1, generator=generator)
    parts = (embedding, linear, bias, W, b, query, projection)

    def fused(indptr, indices, data):
        return kernels.predict_attention(
            *(torch.from_numpy(a) for a in (indptr, indices, data)), *parts
        )

    expected = fused(X.indptr, X.indices, X.data.astype(np.float32))
    for index_type in (np.int32, np.int64):
        for data_type in (np.float32, np.float64):
            got = fused(
                X.indptr.astype(index_type),
                X.indices.astype(index_type),
                X.data.astype(data_type),
            )
            assert torch.equal(got, expected)
    # the definition, row by row
    for row in range(X.shape[0]):
        cols = X.indices[X.indptr[row] : X.indptr[row + 1]]
        values = torch.from_numpy(X.data[X.indptr[row] : X.indptr[row + 1]])
        e = embedding[cols].double() * values.double().unsqueeze(1)
        output = bias.double() + values.double() @ linear[cols].double()
        if len(cols) > 1:
            left, right = torch.triu_indices(len(cols), len(cols), offset=1)
            products = e[left] * e[right]
            hidden = torch.relu(products @ W.double().t() + b.double())
            weights = torch.softmax((hidden @ query.double()).squeeze(1), dim=0)
            output = output + weights @ (products @ projection.double())
        np.testing.assert_allclose(expected[row].double(), output, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_failed_build_warns_and_training_falls_back(fresh_build_state, monkeypatch):
    monkeypatch.setenv("CXX", str(fresh_build_state / "no-such-compiler"))
    with pytest.warns(KernelBuildWarning, match="could not build"):
        assert native.kernels() is None
    # no partial library is left behind
    assert not list(fresh_build_state.glob("*.so"))
    X, y, _ = make_interaction_data(200, n_fields=4, n_categories=3, random_state=0)
    AFMRegressor(max_iter=1, random_state=0).fit(X, y)


def test_the_environment_switches_the_kernels_off(fresh_build_state, monkeypatch):
    monkeypatch.setenv(native.SWITCH, "0")

    def no_build(*args, **kwargs):
        raise AssertionError("nothing should be compiled")

    monkeypatch.setattr(subprocess, "run", no_build)
    assert native.kernels() is None
    assert ops.kernels_for(torch.zeros(3)) is None


@pytest.fixture
def fake_compiler(monkeypatch):
    """A compiler that writes ``built`` as the library; its calls are counted."""
    calls = []

    def compile(command, **kwargs):
        calls.append(command)
        output = command[command.index("-o") + 1]
        with open(output, "w") as library:
            library.write("built")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", compile)
    return calls


def test_a_build_is_compiled_once_and_then_reused(fresh_build_state, fake_compiler):
    first = native.built_library()
    second = native.built_library()
    assert first == second and first.read_text() == "built"
    assert len(fake_compiler) == 1
    names = sorted(p.suffix for p in fresh_build_state.iterdir())
    assert names == [".lock", ".sha256", ".so"]


def test_a_truncated_or_altered_build_is_rebuilt(fresh_build_state, fake_compiler):
    library = native.built_library()
    library.write_text("bui")
    assert native.built_library() == library and library.read_text() == "built"
    library.write_text("other")
    native.built_library()
    assert len(fake_compiler) == 3 and library.read_text() == "built"


def test_a_build_without_its_record_is_rebuilt(fresh_build_state, fake_compiler):
    # as after a crash between the library's rename and its record's
    library = native.built_library()
    library.with_suffix(".sha256").unlink()
    native.built_library()
    assert len(fake_compiler) == 2


def test_a_build_others_can_write_is_rebuilt(fresh_build_state, fake_compiler):
    library = native.built_library()
    library.chmod(0o777)
    native.built_library()
    assert len(fake_compiler) == 2
    assert not library.stat().st_mode & 0o077


def test_the_cache_directory_is_private_whatever_the_umask(
    fresh_build_state, fake_compiler, monkeypatch
):
    cache = fresh_build_state / "cache"
    monkeypatch.setenv(native.CACHE_DIR, str(cache))
    previous = os.umask(0)
    try:
        native.built_library()
    finally:
        os.umask(previous)
    assert cache.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX owners and modes")
@pytest.mark.parametrize("problem", ["open to others", "another owner"])
def test_a_cache_others_could_write_is_not_used(
    fresh_build_state, fake_compiler, monkeypatch, problem
):
    cache = fresh_build_state / "shared"
    cache.mkdir()
    if problem == "open to others":
        cache.chmod(0o777)
    else:
        uid = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
    monkeypatch.setenv(native.CACHE_DIR, str(cache))
    with pytest.warns(KernelBuildWarning, match="does not use the kernel cache"):
        library = native.built_library()
    assert cache not in library.parents and list(cache.iterdir()) == []
    assert library.parent.stat().st_mode & 0o777 == 0o700


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch):
    monkeypatch.delenv(native.CACHE_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert native.cache_directory() == Path.home() / ".cache" / "skafm"
    monkeypatch.setenv("XDG_CACHE_HOME", "/absolute/cache")
    assert native.cache_directory() == Path("/absolute/cache/skafm")


def test_leftovers_of_killed_builds_are_removed(fresh_build_state, fake_compiler):
    name = native.built_library().stem
    for path in native.cache_directory().glob(f"{name}.*"):
        path.unlink()
    partial = fresh_build_state / f"{name}.abc123.partial"
    legacy, recent = fresh_build_state / "tmpold.so", fresh_build_state / "tmpnew.so"
    for path in (partial, legacy, recent):
        path.write_text("half")
    os.utime(legacy, (0, 0))
    native.built_library()
    assert not partial.exists() and not legacy.exists()
    # a recent one may be an earlier version's build in progress
    assert recent.exists()


def test_processes_that_need_the_same_build_compile_it_once(
    fresh_build_state, monkeypatch
):
    calls = []

    def slow_compiler(command, **kwargs):
        calls.append(command)
        time.sleep(0.3)
        with open(command[command.index("-o") + 1], "w") as library:
            library.write("built")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", slow_compiler)
    # flock locks open files, so threads with their own opens stand in for
    # processes
    with ThreadPoolExecutor(3) as pool:
        paths = set(pool.map(lambda _: native.built_library(), range(3)))
    assert len(paths) == 1 and len(calls) == 1


def run_with_cache(cache, code):
    environment = {**os.environ, native.CACHE_DIR: str(cache)}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


FALLBACK_CHECK = """
import subprocess
import warnings


def no_compiler(*args, **kwargs):
    # a build that fails verification cannot be redone here
    raise subprocess.SubprocessError("no compiler in this test")


subprocess.run = no_compiler
import numpy as np
import skafm._native as native
from skafm import AFMClassifier, AFMRegressor
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert native.kernels() is None
print([str(w.message) for w in caught if w.category is native.KernelBuildWarning])
X = np.random.default_rng(0).random((50, 4))
AFMRegressor(max_iter=1).fit(X, X.sum(1))
print("fitted")
"""


def test_a_truncated_library_never_crashes_python(kernels, tmp_path):
    built = native.built_library()
    shutil.copy(built, tmp_path / built.name)
    shutil.copy(built.with_suffix(".sha256"), tmp_path)
    with open(tmp_path / built.name, "r+b") as library:
        library.truncate(built.stat().st_size // 3)
    result = run_with_cache(tmp_path, FALLBACK_CHECK)
    assert result.returncode == 0, result.stderr
    assert "could not build" in result.stdout and "fitted" in result.stdout


def test_a_foreign_library_is_not_used(kernels, tmp_path):
    built = native.built_library()
    foreign = tmp_path / built.name
    compiler = subprocess.run(
        [os.environ.get("CXX", "c++"), "-shared", "-fPIC", "-x", "c++", os.devnull]
        + ["-o", str(foreign)],
        capture_output=True,
    )
    assert compiler.returncode == 0, compiler.stderr
    foreign.with_suffix(".sha256").write_text(native._record(foreign))
    result = run_with_cache(tmp_path, FALLBACK_CHECK)
    assert result.returncode == 0, result.stderr
    assert "without pair_products" in result.stdout and "fitted" in result.stdout


def test_kernels_serve_cpu_float_tensors_only(kernels):
    assert ops.kernels_for(torch.zeros(3)) is kernels
    assert ops.kernels_for(torch.zeros(3, dtype=torch.float64)) is kernels
    assert ops.kernels_for(torch.zeros(3, dtype=torch.float16)) is None
    if torch.cuda.is_available():
        assert ops.kernels_for(torch.zeros(3, device="cuda")) is None


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("data_dtype", [np.float32, np.float64])
def test_kernel_gathers_the_same_padded_rows(kernels, index_dtype, data_dtype):
    rng = np.random.RandomState(0)
    keep = np.ones(30)
    keep[3] = 0.0  # an empty row
    X = sp.diags(keep) @ sp.random(30, 50, density=0.2, random_state=rng, format="csr")
    X = as_active_features(X.astype(data_dtype))
    X.indptr, X.indices = X.indptr.astype(index_dtype), X.indices.astype(index_dtype)
    same_width = np.flatnonzero(np.diff(X.indptr) == np.diff(X.indptr)[0])
    for rows in (rng.permutation(30), np.array([3]), same_width, np.array([], int)):
        gathered = pad_rows(X, rows, kernels)
        expected = pad_rows(X, rows)
        for got, want in zip(
            (gathered.index, gathered.value, gathered.mask),
            (expected.index, expected.value, expected.mask),
            strict=True,
        ):
            assert got.dtype == want.dtype and torch.equal(got, want)


def test_a_verified_library_that_does_not_load_is_rebuilt_once(
    fresh_build_state, fake_compiler, monkeypatch
):
    loads = []

    def load_library(path):
        loads.append(path)
        raise OSError("cannot open shared object file")

    monkeypatch.setattr(torch.ops, "load_library", load_library)
    with pytest.warns(KernelBuildWarning, match="could not build"):
        assert native.kernels() is None
    # built, failed to load, built again, failed again: no third try
    assert len(fake_compiler) == 2 and len(loads) == 2


def test_the_first_build_says_what_it_is_doing_once(
    fresh_build_state, fake_compiler, caplog
):
    with caplog.at_level("INFO", logger="skafm"):
        native.built_library()
        native.built_library()
    said = [record for record in caplog.records if "compiling" in record.message]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert "python -m skafm.build" in said[0].message
    assert any("compiled in" in record.message for record in caplog.records)


def test_the_build_message_can_be_silenced(fresh_build_state, fake_compiler, caplog):
    import logging

    logger = logging.getLogger("skafm")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        native.built_library()
    finally:
        logger.setLevel(level)
    assert not [r for r in caplog.records if r.name == "skafm"]


def test_the_build_command_reports_a_ready_build(kernels, capsys):
    from skafm.build import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "skafm kernels ready:" in out and "(already built)" in out
    assert str(native.library_path()) in out


def test_the_build_command_fails_clearly_without_a_compiler(
    fresh_build_state, monkeypatch, capsys
):
    from skafm.build import main

    monkeypatch.setenv("CXX", str(fresh_build_state / "no-such-compiler"))
    assert main([]) == 1
    assert "could not build" in capsys.readouterr().err
    monkeypatch.setenv(native.SWITCH, "0")
    assert main([]) == 1
    assert "switches the kernels off" in capsys.readouterr().err
