"""Plot of interaction importance, in the style of scikit-learn's Display classes."""

import numpy as np

from ._explain import interaction_importance


class InteractionDisplay:
    """Field-by-field importance heatmap and a bar chart of the top pairs.

    Build it with :meth:`from_estimator`; matplotlib is imported only when
    plotting. Field pairs that never occur in the data (a one-hot field with
    itself) are left blank in the heatmap and out of the bar chart; a field
    paired with itself (a multi-hot field) is labelled "within".

    Parameters
    ----------
    importance : InteractionImportance
        Output of :func:`skafm.inspection.interaction_importance`.

    top_n : int, default=10
        Most field pairs in the bar chart (fewer when fewer occur).

    Attributes
    ----------
    figure_ : matplotlib.figure.Figure
    ax_ : ndarray of matplotlib Axes
        The heatmap's axes, then the bar chart's.
    heatmap_ : matplotlib.image.AxesImage
    bars_ : matplotlib.container.BarContainer

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from skafm import AFMRegressor
    >>> from skafm.datasets import make_interaction_data
    >>> from skafm.inspection import InteractionDisplay
    >>> X, y, _ = make_interaction_data(
    ...     500, n_fields=4, n_categories=3, random_state=0)
    >>> model = AFMRegressor(max_iter=5, random_state=0).fit(X, y)
    >>> fields = [f"f{column // 3}" for column in range(12)]
    >>> display = InteractionDisplay.from_estimator(model, X, groups=fields)
    >>> display.ax_.shape
    (2,)
    """

    def __init__(self, importance, *, top_n=10):
        self.importance = importance
        self.top_n = top_n

    @classmethod
    def from_estimator(
        cls, estimator, X, *, groups=None, feature_names=None, top_n=10, ax=None
    ):
        """Compute the importance of a fitted model on X and plot it.

        Parameters
        ----------
        estimator : AFMRegressor, AFMClassifier or Pipeline ending in one
            Fitted model; fields are derived from a Pipeline's encoder.
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Data over which the importance is averaged.
        groups : dict or array-like, default=None
            Explicit fields, as in :func:`interaction_importance`.
        feature_names : array-like of str, default=None
            Names of the model's input columns.
        top_n : int, default=10
            Most field pairs in the bar chart (fewer when fewer occur).
        ax : sequence of two matplotlib Axes, default=None
            Where to draw; a new figure when None.

        Returns
        -------
        display : InteractionDisplay
        """
        importance = interaction_importance(
            estimator, X, groups=groups, feature_names=feature_names
        )
        return cls(importance, top_n=top_n).plot(ax=ax)

    def plot(self, ax=None, *, cmap="viridis"):
        """Draw the heatmap and the bar chart.

        Parameters
        ----------
        ax : sequence of two matplotlib Axes, default=None
            Where to draw; a new figure when None.
        cmap : str, default="viridis"
            Colormap of the heatmap.

        Returns
        -------
        display : InteractionDisplay
        """
        import matplotlib.pyplot as plt

        if ax is None:
            n_fields = len(self.importance.field_names)
            side = min(max(4.0, 0.45 * n_fields + 2.0), 14.0)
            _, ax = plt.subplots(
                1, 2, figsize=(2 * side + 1, side), layout="constrained"
            )
        ax = np.asarray(ax)
        heat_ax, bar_ax = ax
        importance = self.importance
        matrix = importance.field_importance
        if importance.field_pair_counts is not None:
            matrix = np.ma.masked_where(importance.field_pair_counts == 0, matrix)
        names = [str(name) for name in importance.field_names]
        self.heatmap_ = heat_ax.imshow(matrix, cmap=cmap)
        heat_ax.set_xticks(range(len(names)), labels=names, rotation=90)
        heat_ax.set_yticks(range(len(names)), labels=names)
        # short and wrapped: a long title is cut off by the figure's edge
        # when the heatmap's axes are narrow
        heat_ax.set_title("Importance by field pair", wrap=True)
        heat_ax.figure.colorbar(self.heatmap_, ax=heat_ax, label="mean |contribution|")

        top = importance.top_field_pairs(self.top_n)[::-1]
        labels = [f"{a} (within)" if a == b else f"{a} x {b}" for a, b, _ in top]
        self.bars_ = bar_ax.barh(range(len(top)), [value for _, _, value in top])
        bar_ax.set_yticks(range(len(top)), labels=labels)
        bar_ax.set_xlabel("mean |contribution|")
        # right-aligned: long pair labels can leave the bars' axes narrower
        # than the title, which centred would run past the figure's edge
        bar_ax.set_title(f"Top {len(top)} field pairs", loc="right", wrap=True)

        self.ax_ = ax
        self.figure_ = heat_ax.figure
        return self
