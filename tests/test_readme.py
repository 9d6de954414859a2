"""README.md tells the truth: its Python example runs and its test command is CI's."""

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

pytestmark = pytest.mark.skipif(not README.exists(), reason="not run from a clone")


def test_readme_quickstart_runs_and_scores_well(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    script = tmp_path / "quickstart.py"
    script.write_text(blocks[0])
    runpy.run_path(str(script), run_name="__main__")
    assert float(capsys.readouterr().out.strip()) > 0.9


def test_ci_runs_the_readme_test_command():
    text = README.read_text()
    marker = text.index("<!-- ci:test-command -->")
    command = re.search(r"```bash\n(.*?)\n```", text[marker:], flags=re.S).group(1)
    assert "pytest" in command
    assert "ci:test-command" in (ROOT / ".ci" / "run").read_text()
