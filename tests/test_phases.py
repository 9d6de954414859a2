"""The training history of a fit in two phases: FM pre-training, then the AFM."""

import numpy as np
import pytest

import skafm._training
from skafm import AFMClassifier, AFMRegressor

from .conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

TWO_PHASES = dict(FAST, init="fm", max_iter=6, early_stopping=True)


def interrupt_when(monkeypatch, condition):
    """Ctrl-C in the epochs for which ``condition(trainer, epoch)`` holds."""
    original = skafm._training.Trainer.run_epoch
    seen = {"epochs": 0}

    def run_epoch(self, *args, **kwargs):
        seen["epochs"] += 1
        if condition(self, seen["epochs"]):
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(skafm._training.Trainer, "run_epoch", run_epoch)


@pytest.mark.parametrize("Estimator", [AFMRegressor, AFMClassifier])
def test_the_history_lists_both_phases(Estimator, planted_classification):
    X, y, _ = planted_classification
    model = Estimator(**TWO_PHASES).fit(X, y)
    assert [phase["phase"] for phase in model.phases_] == ["fm", "afm"]
    n_fm, n_afm = (phase["n_iter"] for phase in model.phases_)
    assert model.n_iter_ == n_fm + n_afm == len(model.loss_curve_)
    assert len(model.validation_scores_) == model.n_iter_
    assert model.best_validation_score_ == max(model.validation_scores_)
    for phase, scores in zip(
        model.phases_,
        (model.validation_scores_[:n_fm], model.validation_scores_[n_fm:]),
        strict=True,
    ):
        assert phase["best_validation_score"] == max(scores)
    n_train = X.shape[0] - round(0.1 * X.shape[0])
    assert model.t_ == model.n_iter_ * n_train


def test_the_fm_is_kept_when_the_attentional_phase_does_not_beat_it(
    monkeypatch, planted_regression
):
    X, y, _ = planted_regression
    fm = AFMRegressor(**dict(TWO_PHASES, attention=False)).fit(X, y)
    # Ctrl-C in the first epoch of the AFM: no attentional epoch was scored
    interrupt_when(monkeypatch, lambda trainer, _: trainer.module.attention)
    with pytest.warns(UserWarning, match="interrupted"):
        model = AFMRegressor(**TWO_PHASES).fit(X, y)
    assert model.best_phase_ == "fm" and not model.module_.attention
    assert model.best_validation_score_ == max(model.validation_scores_)
    assert model.n_iter_ == model.phases_[0]["n_iter"] == fm.n_iter_
    # the same FM as a plain FM fit with the same seed
    np.testing.assert_array_equal(model.predict(X), fm.predict(X))

    # a warm start trains the attentional phase from that FM
    monkeypatch.undo()
    model.set_params(warm_start=True, max_iter=3).fit(X, y)
    assert model.phases_[-1]["phase"] == "afm"
    assert model.n_iter_ == fm.n_iter_ + 3


def test_an_interrupt_during_pre_training_keeps_its_epochs(
    monkeypatch, planted_regression
):
    X, y, _ = planted_regression
    interrupt_when(monkeypatch, lambda _, epoch: epoch == 4)
    with pytest.warns(UserWarning, match="interrupted"):
        model = AFMRegressor(**TWO_PHASES).fit(X, y)
    assert model.n_iter_ == len(model.loss_curve_) == 3
    assert model.best_phase_ == "fm"
    assert np.isfinite(model.predict(X[:5])).all()


def test_verbose_says_which_phase_won(monkeypatch, capsys, planted_regression):
    X, y, _ = planted_regression
    interrupt_when(monkeypatch, lambda trainer, _: trainer.module.attention)
    with pytest.warns(UserWarning):
        AFMRegressor(**dict(TWO_PHASES, verbose=1)).fit(X, y)
    out = capsys.readouterr().out
    assert "Phase 1 of 2" in out and "Phase 2 of 2" in out
    assert "did not improve on the factorization machine" in out


def test_the_regressors_fm_keeps_its_projection_at_one(
    planted_regression, planted_classification, tmp_path
):
    import skafm.io

    X, y, _ = planted_regression
    fm = AFMRegressor(**dict(FAST, attention=False, max_iter=3)).fit(X, y)
    assert not fm.module_.projection.requires_grad
    assert np.all(fm.module_.projection.detach().numpy() == 1.0)
    # the AFM started from it learns its own
    afm = AFMRegressor(**dict(TWO_PHASES, max_iter=3)).fit(X, y)
    assert afm.module_.projection.requires_grad
    # a saved FM goes on training with p fixed
    path = tmp_path / "fm.skafm"
    skafm.io.dump(fm, path)
    loaded = skafm.io.load(path)
    assert loaded.alpha_ == fm.alpha_
    loaded.partial_fit(X, y)
    assert np.all(loaded.module_.projection.detach().numpy() == 1.0)
    # the classifier's defaults were chosen with a learned p, and several
    # classes need it to tell their interactions apart
    Xc, yc, _ = planted_classification
    for labels in (yc, np.arange(yc.size) % 3):
        clf = AFMClassifier(**dict(FAST, attention=False, max_iter=2)).fit(Xc, labels)
        assert clf.module_.projection.requires_grad


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_the_attentional_phase_continues_the_fms_optimizer_state(
    optimizer, planted_regression
):
    X, y, _ = planted_regression
    settings = dict(
        TWO_PHASES, optimizer=optimizer, max_iter=3, early_stopping=False, batch_size=64
    )
    model = AFMRegressor(**settings).fit(X, y)
    assert [phase["n_iter"] for phase in model.phases_] == [3, 3]
    steps_per_phase = 3 * int(np.ceil(X.shape[0] / 64))
    optimizer_state = model._trainer.optimizer.state
    module = model._trainer.module
    # the tables went on from the FM's steps; the attention network began anew
    for table in (module.embedding, module.linear, module.bias):
        assert float(optimizer_state[table]["step"]) == 2 * steps_per_phase
    assert float(optimizer_state[module.attention_weight]["step"]) == steps_per_phase
