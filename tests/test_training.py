"""Training controls: early stopping, warm starts, partial_fit, progress, interrupts."""

import io
import pickle
import warnings
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.model_selection import train_test_split

import skafm._base
import skafm._batching
import skafm._training
from skafm import AFMClassifier, AFMRegressor
from skafm._nn import AttentionalFactorizationMachine
from skafm.datasets import make_interaction_data
from skafm.exceptions import TrainingDivergedError

from .conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def split(planted_regression):
    X, y, _ = planted_regression
    return train_test_split(X, y, test_size=0.3, random_state=0)


def overfitting_regressor(**params):
    """Big, unregularised and fast-learning: the validation loss turns up soon."""
    return AFMRegressor(
        n_factors=32,
        attention_size=8,
        alpha=0.0,
        learning_rate_init=0.05,
        batch_size=32,
        max_iter=200,
        random_state=0,
        **params,
    )


def test_early_stopping_halts_and_restores_the_best_epoch(split):
    X_train, X_val, y_train, y_val = split
    X_train, y_train = X_train[:400], y_train[:400]  # few samples: it overfits
    # one phase, so that the stopping rule is read off one run of epochs
    model = overfitting_regressor(
        early_stopping=True, n_iter_no_change=5, init="random"
    )
    model.fit(X_train, y_train, X_val=X_val, y_val=y_val)

    assert model.n_iter_ < 200
    assert len(model.validation_scores_) == model.n_iter_ == len(model.loss_curve_)
    best = int(np.argmax(model.validation_scores_))
    # stopped n_iter_no_change epochs after the best one
    assert model.n_iter_ == best + 1 + 5
    assert model.best_validation_score_ == max(model.validation_scores_)
    # the restored model is the best epoch's: its score is the best score
    restored = -mean_squared_error(y_val, model.predict(X_val))
    assert restored == pytest.approx(model.best_validation_score_, rel=1e-4)
    assert model.validation_scores_[-1] < model.best_validation_score_
    assert model.best_loss_ is None


def test_early_stopping_sets_aside_a_validation_fraction(split):
    X_train, _, y_train, _ = split
    model = AFMRegressor(**{**FAST, "max_iter": 5}, early_stopping=True)
    model.fit(X_train[:1000], y_train[:1000])
    n_train = 1000 - 100
    assert model.t_ == model.n_iter_ * n_train
    assert len(model.validation_scores_) == model.n_iter_


def test_classifier_validation_split_is_stratified():
    rng = np.random.RandomState(0)
    X = sp.csr_matrix(np.eye(5)[rng.randint(0, 5, 200)])
    y = np.r_[np.zeros(190, int), np.ones(10, int)]  # 5% minority class
    model = AFMClassifier(
        **FAST, early_stopping=True, validation_fraction=0.2, scoring="recall"
    )
    model.fit(X, y)
    # a stratified 20% split holds 2 of the 10 minority samples, so the
    # recall on it is one of 0, 0.5 or 1
    assert set(model.validation_scores_) <= {0.0, 0.5, 1.0}


def test_auto_early_stopping_follows_size_and_validation_data(split):
    X_train, X_val, y_train, y_val = split
    small = AFMRegressor(**FAST).fit(X_train, y_train)
    assert small.validation_scores_ is None and small.best_loss_ is not None
    given = AFMRegressor(**FAST).fit(X_train, y_train, X_val=X_val, y_val=y_val)
    assert len(given.validation_scores_) == given.n_iter_
    assert given.t_ == given.n_iter_ * X_train.shape[0]


def test_validation_data_with_early_stopping_off_is_refused(split):
    X_train, X_val, y_train, y_val = split
    with pytest.raises(ValueError, match="early_stopping is False"):
        AFMRegressor(**FAST, early_stopping=False).fit(
            X_train, y_train, X_val=X_val, y_val=y_val
        )
    with pytest.raises(ValueError, match="y_val is needed"):
        AFMRegressor(**FAST).fit(X_train, y_train, X_val=X_val)


def test_validation_labels_must_be_known_classes(planted_classification):
    X, y, _ = planted_classification
    with pytest.raises(ValueError, match="classes not in"):
        AFMClassifier(**FAST).fit(X, y, X_val=X[:10], y_val=np.full(10, 7))


@pytest.mark.parametrize("scoring", [None, "r2", "neg_mean_absolute_error"])
def test_other_scorings_drive_early_stopping(split, scoring):
    X_train, X_val, y_train, y_val = split
    model = AFMRegressor(**{**FAST, "max_iter": 4}, scoring=scoring)
    model.fit(X_train, y_train, X_val=X_val, y_val=y_val)
    assert len(model.validation_scores_) == 4
    if scoring in (None, "r2"):
        assert model.best_validation_score_ == pytest.approx(
            r2_score(y_val, model.predict(X_val)), rel=1e-4
        )


def test_convergence_warning_only_when_max_iter_ends_training(split):
    X_train, _, y_train, _ = split
    with pytest.warns(ConvergenceWarning) as record:
        AFMRegressor(**{**FAST, "max_iter": 2}).fit(X_train, y_train)
    # the warning points at the caller's line, not at skafm's or sklearn's code
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        AFMRegressor(**{**FAST, "max_iter": 500}, tol=10.0).fit(X_train, y_train)


def test_warm_start_continues_the_loss_curve(split):
    X_train, _, y_train, _ = split
    model = AFMRegressor(**{**FAST, "max_iter": 3}, warm_start=True)
    model.fit(X_train, y_train)
    first_curve, first_module = list(model.loss_curve_), model.module_
    model.fit(X_train, y_train)
    assert model.n_iter_ == 6
    assert model.t_ == 6 * X_train.shape[0]
    assert model.loss_curve_[:3] == first_curve
    # the fourth epoch continues from the third, it does not start over
    assert model.loss_curve_[3] < first_curve[1]
    assert model.module_ is not first_module  # trained a copy, swapped in

    cold = AFMRegressor(**{**FAST, "max_iter": 3}).fit(X_train, y_train)
    cold.fit(X_train, y_train)
    assert cold.loss_curve_ == first_curve


def test_warm_start_refuses_changes_it_cannot_continue(planted_classification):
    X, y, _ = planted_classification
    model = AFMClassifier(**FAST, warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match="same classes"):
        model.fit(X, np.where(y == 1, "one", "zero"))
    with pytest.raises(ValueError, match="n_factors, attention_size and attention"):
        model.set_params(n_factors=3).fit(X, y)
    model.set_params(n_factors=FAST["n_factors"])
    with pytest.raises(ValueError, match="features"):
        model.fit(X[:, :-1], y)
    model.set_params(dropout=0.2, learning_rate_init=0.001, optimizer="adagrad").fit(
        X, y
    )


def test_partial_fit_over_ten_chunks_matches_fit(split):
    X_train, X_test, y_train, y_test = split
    epochs = 8
    params = {**FAST, "max_iter": epochs, "tol": 0.0, "shuffle": False}
    full = AFMRegressor(**params).fit(X_train, y_train)
    assert full.n_iter_ == epochs

    chunked = AFMRegressor(**params)
    chunks = np.array_split(np.arange(X_train.shape[0]), 10)
    for _ in range(epochs):
        for rows in chunks:
            chunked.partial_fit(X_train[rows], y_train[rows])
    assert chunked.n_iter_ == 10 * epochs
    assert chunked.t_ == full.t_
    full_r2 = r2_score(y_test, full.predict(X_test))
    chunked_r2 = r2_score(y_test, chunked.predict(X_test))
    assert full_r2 > 0.8
    assert chunked_r2 == pytest.approx(full_r2, abs=0.05)


def test_classifier_partial_fit_needs_classes_first(planted_classification):
    X, y, _ = planted_classification
    model = AFMClassifier(**FAST)
    with pytest.raises(ValueError, match="classes must be passed"):
        model.partial_fit(X[:50], y[:50])
    only_zeros = y == 0
    model.partial_fit(X[only_zeros][:50], y[only_zeros][:50], classes=[0, 1])
    np.testing.assert_array_equal(model.classes_, [0, 1])
    model.partial_fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="not the same as on the first call"):
        model.partial_fit(X[:100], y[:100], classes=[0, 1, 2])
    with pytest.raises(ValueError, match="classes not in"):
        model.partial_fit(X[:10], np.full(10, 5))
    with pytest.raises(ValueError, match="expecting 30 features"):
        model.partial_fit(X[:10, :-2], y[:10])
    assert model.predict_proba(X).shape == (X.shape[0], 2)


def test_partial_fit_refuses_early_stopping(split):
    X_train, _, y_train, _ = split
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        AFMRegressor(early_stopping=True).partial_fit(X_train, y_train)


def test_partial_fit_continues_a_fitted_model(split):
    X_train, _, y_train, _ = split
    model = AFMRegressor(**FAST).fit(X_train, y_train)
    n_iter = model.n_iter_
    model.partial_fit(X_train[:100], y_train[:100])
    assert model.n_iter_ == n_iter + 1


def test_verbose_one_line_per_epoch_with_validation(split):
    X_train, X_val, y_train, y_val = split
    out = io.StringIO()
    with redirect_stdout(out):
        AFMRegressor(**{**FAST, "max_iter": 3}, verbose=1).fit(
            X_train, y_train, X_val=X_val, y_val=y_val
        )
    lines = [line for line in out.getvalue().splitlines() if line.startswith("Epoch")]
    assert len(lines) == 3
    # scoring="loss": the validation loss itself, positive as the training loss
    assert all(", validation loss = " in line for line in lines)
    assert all(
        float(line.split("validation loss = ")[1].split(",")[0]) > 0 for line in lines
    )
    # the epoch of the total, and a bound on the time left while epochs remain
    assert [line.split(",")[0] for line in lines] == [
        "Epoch 1/3",
        "Epoch 2/3",
        "Epoch 3/3",
    ]
    assert lines[0].endswith(" left)") and lines[-1].endswith(" s")


def test_verbose_prints_the_training_loss_in_the_units_of_loss_curve(split):
    X_train, X_val, y_train, y_val = split
    out = io.StringIO()
    with redirect_stdout(out):
        # targets in thousands: a standardised loss would be ~10^6 too small
        model = AFMRegressor(**{**FAST, "max_iter": 3}, verbose=1).fit(
            X_train, 1000 * y_train, X_val=X_val, y_val=1000 * y_val
        )
    lines = [line for line in out.getvalue().splitlines() if line.startswith("Epoch")]
    printed = [float(line.split(", loss = ")[1].split(",")[0]) for line in lines]
    np.testing.assert_allclose(printed, model.loss_curve_, rtol=1e-5)
    validation = [
        float(line.split("validation loss = ")[1].split(",")[0]) for line in lines
    ]
    # both in squared thousands: the same order of magnitude
    assert 0.01 < printed[-1] / validation[-1] < 100


def test_verbose_names_a_scorer():
    X, y, _ = make_interaction_data(300, n_fields=4, n_categories=3, random_state=0)
    out = io.StringIO()
    with redirect_stdout(out):
        AFMRegressor(
            **{**FAST, "max_iter": 2}, scoring="r2", early_stopping=True, verbose=1
        ).fit(X, y)
    assert ", validation r2 = " in out.getvalue()


def test_verbose_two_draws_a_progress_bar_without_tqdm(split, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    X_train, _, y_train, _ = split
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        AFMRegressor(**{**FAST, "max_iter": 2}, verbose=2).fit(X_train, y_train)
    assert f"100.0% ({X_train.shape[0]}/{X_train.shape[0]} samples)" in err.getvalue()
    assert out.getvalue().count("Epoch") == 2


def test_silent_by_default(split, capsys):
    X_train, _, y_train, _ = split
    AFMRegressor(**{**FAST, "max_iter": 2}).fit(X_train, y_train)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def interrupt_after(monkeypatch, n_batches):
    """Make the training loop's batch iterator raise Ctrl-C after n batches."""
    real = skafm._training.iter_row_batches
    served = {"n": 0}

    def interrupted(*args, **kwargs):
        for rows in real(*args, **kwargs):
            if served["n"] == n_batches:
                raise KeyboardInterrupt
            served["n"] += 1
            yield rows

    monkeypatch.setattr(skafm._training, "iter_row_batches", interrupted)


def test_interrupt_leaves_a_fitted_picklable_model(split, monkeypatch):
    X_train, X_val, y_train, y_val = split
    batches_per_epoch = int(np.ceil(X_train.shape[0] / FAST["batch_size"]))
    interrupt_after(monkeypatch, 3 * batches_per_epoch + 2)
    model = AFMRegressor(**{**FAST, "max_iter": 50}, early_stopping=True)
    with pytest.warns(
        UserWarning, match="interrupted by the user during epoch 4"
    ) as record:
        model.fit(X_train, y_train, X_val=X_val, y_val=y_val)
    assert record[0].filename == __file__
    assert model.n_iter_ == 3
    restored = pickle.loads(pickle.dumps(model))
    prediction = restored.predict(X_val)
    assert np.isfinite(prediction).all()
    # the best of the three finished epochs, not the half-trained fourth
    assert -mean_squared_error(y_val, prediction) == pytest.approx(
        model.best_validation_score_, rel=1e-4
    )


def test_diverging_learning_rate_is_a_clear_error_and_keeps_the_old_model(split):
    X_train, _, y_train, _ = split
    model = AFMRegressor(**FAST, warm_start=True).fit(X_train, y_train)
    before = model.predict(X_train)
    model.set_params(learning_rate_init=1e10)
    with pytest.raises(TrainingDivergedError, match="training diverged"):
        model.fit(X_train, y_train)
    assert isinstance(TrainingDivergedError("x"), ValueError)
    np.testing.assert_array_equal(model.predict(X_train), before)
    for parameter in model.module_.parameters():
        assert parameter.isfinite().all()
    with pytest.raises(ValueError, match="training diverged"):
        AFMRegressor(**{**FAST, "learning_rate_init": 1e10}).fit(X_train, y_train)


def wide_rows(n_rows=60, n_features=400, seed=0):
    rng = np.random.RandomState(seed)
    widths = rng.randint(2, 120, size=n_rows)
    rows = np.repeat(np.arange(n_rows), widths)
    cols = np.concatenate([rng.choice(n_features, w, replace=False) for w in widths])
    X = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_rows, n_features))
    return X, rng.normal(size=n_rows)


def test_batches_split_for_memory_take_the_same_steps(monkeypatch):
    X, y = wide_rows()
    params = {**FAST, "batch_size": 32, "max_iter": 3}
    whole = AFMRegressor(**params).fit(X, y)
    # a budget far below one batch's pair tensors forces many parts per batch
    monkeypatch.setattr(skafm._training, "TRAIN_FLOAT_BUDGET", 20_000)
    split = AFMRegressor(**params).fit(X, y)
    np.testing.assert_allclose(split.loss_curve_, whole.loss_curve_, rtol=1e-4)
    np.testing.assert_allclose(split.predict(X), whole.predict(X), rtol=1e-3, atol=1e-5)


def test_a_row_too_wide_for_memory_is_a_clear_error(monkeypatch):
    X, y = wide_rows()
    monkeypatch.setattr(skafm._batching, "MAX_ROW_FLOATS", 50_000)
    with pytest.raises(ValueError, match="active features.*attention=False"):
        AFMRegressor(**FAST).fit(X, y)
    # a factorization machine never builds per-pair tensors
    fm = AFMRegressor(**FAST, attention=False).fit(X, y)
    assert np.isfinite(fm.predict(X)).all()
    monkeypatch.setattr(skafm._batching, "MAX_ROW_FLOATS", 1 << 26)
    model = AFMRegressor(**FAST).fit(X, y)
    monkeypatch.setattr(skafm._batching, "MAX_ROW_FLOATS", 50_000)
    with pytest.raises(ValueError, match="limit of"):
        model.predict(X)


def test_init_fm_starts_the_afm_where_a_plain_fm_ended(split):
    X_train, _, y_train, _ = split
    params = {**FAST, "max_iter": 10, "dropout": 0.0, "early_stopping": False}
    fm = AFMRegressor(**params, attention=False).fit(X_train, y_train)
    pretrained = AFMRegressor(**{**params, "init": "fm"}).fit(X_train, y_train)
    scratch = AFMRegressor(**{**params, "init": "random"}).fit(X_train, y_train)
    # the first AFM epoch continues from the FM's loss instead of starting over
    first_afm_loss = pretrained.loss_curve_[pretrained.phases_[0]["n_iter"]]
    assert first_afm_loss < 3 * fm.loss_curve_[-1]
    assert first_afm_loss < 0.2 * scratch.loss_curve_[0]
    assert [phase["n_iter"] for phase in pretrained.phases_] == [10, 10]
    assert pretrained.n_iter_ == 20


def test_init_fm_is_ignored_without_attention(split):
    X_train, X_val, y_train, _ = split
    params = {**FAST, "max_iter": 3, "attention": False}
    a = AFMRegressor(**{**params, "init": "fm"}).fit(X_train, y_train)
    b = AFMRegressor(**{**params, "init": "random"}).fit(X_train, y_train)
    np.testing.assert_array_equal(a.predict(X_val), b.predict(X_val))


def test_init_fm_keeps_the_fm_when_no_afm_epoch_beats_it(split, monkeypatch):
    X_train, X_val, y_train, y_val = split
    real_fit_epochs = skafm._training.fit_epochs
    fm_states = []

    def worsening_afm_phase(trainer, *args, validation_score=None, **kwargs):
        if trainer.module.attention and validation_score is not None:
            # every AFM epoch scores far below the FM it started from
            scores = iter([-1e6 - epoch for epoch in range(100)])
            return real_fit_epochs(
                trainer, *args, validation_score=lambda: next(scores), **kwargs
            )
        history = real_fit_epochs(
            trainer, *args, validation_score=validation_score, **kwargs
        )
        fm_states.append({k: v.clone() for k, v in trainer.module.state_dict().items()})
        return history

    monkeypatch.setattr(skafm._base, "fit_epochs", worsening_afm_phase)
    model = AFMRegressor(**{**FAST, "max_iter": 20, "init": "fm"}, n_iter_no_change=3)
    model.fit(X_train, y_train, X_val=X_val, y_val=y_val)
    ((fm_state,),) = [fm_states]
    assert model.best_phase_ == "fm" and not model.module_.attention
    for name, value in model.module_.state_dict().items():
        np.testing.assert_array_equal(
            value.numpy(), fm_state[name].numpy(), err_msg=name
        )
    fm_phase, afm_phase = model.phases_
    assert afm_phase["n_iter"] == 3
    assert model.best_validation_score_ == fm_phase["best_validation_score"]
    assert model.best_validation_score_ == max(model.validation_scores_)


def test_init_frozen_fm_trains_the_attention_on_the_fms_tables(split, monkeypatch):
    X_train, _, y_train, _ = split
    starts = []
    real_start = AttentionalFactorizationMachine.start_from_factorization_machine

    def recording_start(self, fm, mean_pairs):
        real_start(self, fm, mean_pairs)
        starts.append({k: v.clone() for k, v in self.state_dict().items()})

    monkeypatch.setattr(
        AttentionalFactorizationMachine,
        "start_from_factorization_machine",
        recording_start,
    )
    params = {**FAST, "max_iter": 4, "early_stopping": False, "init": "frozen_fm"}
    model = AFMRegressor(**params).fit(X_train, y_train)
    ((start,),) = [starts]
    end = model.module_.state_dict()
    for name in ("embedding", "linear"):
        np.testing.assert_array_equal(end[name].numpy(), start[name].numpy())
    for name in ("attention_weight", "attention_query", "projection", "bias"):
        assert not np.array_equal(end[name].numpy(), start[name].numpy()), name
    # the tables are fixed during that fit only: a warm start trains them
    assert all(p.requires_grad for p in model.module_.parameters())
    model.set_params(warm_start=True, max_iter=1).fit(X_train, y_train)
    changed = model.module_.state_dict()["embedding"].numpy()
    assert not np.array_equal(changed, start["embedding"].numpy())


def test_verbose_names_the_two_phases_of_init_fm(split):
    X_train, _, y_train, _ = split
    output = io.StringIO()
    with redirect_stdout(output):
        AFMRegressor(**{**FAST, "max_iter": 2, "init": "fm"}, verbose=1).fit(
            X_train, y_train
        )
    lines = output.getvalue().splitlines()
    assert lines[0] == "Phase 1 of 2: pre-training a factorization machine (init='fm')"
    assert lines[3] == (
        "Phase 2 of 2: training the attentional factorization machine from it"
    )
    assert sum(line.startswith("Epoch") for line in lines) == 4


def test_interrupt_during_fm_pretraining_stops_the_whole_fit(split, monkeypatch):
    X_train, X_val, y_train, _ = split
    interrupt_after(monkeypatch, 2)
    model = AFMRegressor(**{**FAST, "max_iter": 50, "init": "fm"})
    with pytest.warns(UserWarning, match="interrupted by the user") as record:
        model.fit(X_train, y_train)
    assert len(record) == 1 and record[0].filename == __file__
    # no AFM epoch ran after the Ctrl-C; the model is the FM it started from
    assert model.n_iter_ == 0
    assert np.isfinite(model.predict(X_val)).all()
