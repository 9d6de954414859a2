"""Optional integrations are imported only when used."""

import subprocess
import sys

OPTIONAL = ["dask", "distributed", "dask_ml", "ray", "matplotlib", "hypothesis"]


def test_importing_skafm_imports_no_optional_package():
    code = (
        "import sys\n"
        "import skafm, skafm.datasets, skafm.exceptions, skafm.inspection, skafm.io\n"
        "import skafm.distributed\n"
        f"print(sorted(name for name in {OPTIONAL!r} if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
