"""The workflow stays as snakefmt formats it: the snakemake-workflow-catalog shows
formatting beside linting for every workflow it lists (issue 24). `--lint` is
tests/test_workflow.py's test_lint_is_clean."""
import shutil
import subprocess

import pytest

from conftest import ROOT


@pytest.mark.skipif(shutil.which("snakefmt") is None,
                    reason="snakefmt is not installed (pip install -e '.[test]' installs snakefmt 2.1.0)")
def test_snakefmt_check_is_clean():
    p = subprocess.run(["snakefmt", "--check", "workflow/"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, "run `snakefmt workflow/`:\n" + p.stdout + p.stderr
