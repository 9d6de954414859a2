"""The ``python -m skafm`` demo."""

from skafm._demo import main, run_demo


def test_demo_ranks_afm_above_fm_above_the_linear_model():
    lines = []
    results = run_demo(n_samples=3000, task="regression", out=lines.append)
    linear, fm, afm = (scores["RMSE"] for scores in results.values())
    assert list(results)[-1] == "AFM"
    assert afm < fm < linear
    assert afm < 0.5 * linear
    assert any("planted interacting field pairs" in line for line in lines)


def test_demo_command_line_for_classification(capsys):
    main(["--task", "classification", "--n-samples", "1500"])
    out = capsys.readouterr().out
    assert "AFM" in out and "linear (LogisticRegression)" in out and "ROC AUC" in out
