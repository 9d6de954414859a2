"""README.md tells the truth: its Python example runs and its test command is CI's."""

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

pytestmark = pytest.mark.skipif(not README.exists(), reason="not run from a clone")


def test_readme_python_examples_run_and_score_well(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README.md lost its python examples"
    # later examples continue from the earlier ones, as a reader runs them
    script = tmp_path / "readme_examples.py"
    script.write_text("\n".join(blocks))
    namespace = runpy.run_path(str(script), run_name="__main__")
    assert float(capsys.readouterr().out.strip()) > 0.9
    rows = namespace["explanation"].rows
    assert len(rows) == 5
    assert len(namespace["importance"].top_field_pairs(3)) == 3


def test_ci_runs_the_readme_test_command():
    text = README.read_text()
    marker = text.index("<!-- ci:test-command -->")
    command = re.search(r"```bash\n(.*?)\n```", text[marker:], flags=re.S).group(1)
    assert "pytest" in command
    assert "ci:test-command" in (ROOT / ".ci" / "run").read_text()
