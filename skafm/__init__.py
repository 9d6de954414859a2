"""scikit-learn estimators for Attentional Factorization Machines (AFM).

AFM (Xiao et al., IJCAI 2017) extends factorization machines with an attention
network that learns how much each pairwise feature interaction matters.
"""

from ._afm import AFMClassifier, AFMRegressor

__version__ = "0.1.0.dev0"

__all__ = ["AFMClassifier", "AFMRegressor", "__version__"]
