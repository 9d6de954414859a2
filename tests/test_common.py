"""scikit-learn's own estimator checks on every skafm estimator."""

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


@parametrize_with_checks(
    [AFMRegressor(), AFMClassifier()],
    expected_failed_checks=lambda estimator: SAMPLE_WEIGHT_EQUIVALENCE,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
