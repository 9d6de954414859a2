"""scikit-learn's own estimator checks on every skafm estimator."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from skafm import AFMClassifier, AFMRegressor

# scikit-learn expects these to fail for every minibatch SGD learner: a zero
# weight and a removed sample give different shuffles and batch compositions.
SAMPLE_WEIGHT_EQUIVALENCE = {
    "check_sample_weight_equivalence_on_dense_data": (
        "stochastic minibatch training: zero weights change batch composition"
    ),
    "check_sample_weight_equivalence_on_sparse_data": (
        "stochastic minibatch training: zero weights change batch composition"
    ),
}


# As scikit-learn sets its own iterative estimators' max_iter low for these
# checks: they test the API's behaviour on tiny data sets, which the default
# network and learning rate would fit for hundreds of epochs.
CHECKED = dict(n_factors=8, attention_size=8, max_iter=8)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@parametrize_with_checks(
    [AFMRegressor(**CHECKED), AFMClassifier(**CHECKED)],
    expected_failed_checks=lambda estimator: SAMPLE_WEIGHT_EQUIVALENCE,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
