"""benchmarks/fault_injection.py keeps working: a run killed mid-stage resumes to complete outputs."""

import importlib.util
from pathlib import Path

import pytest


@pytest.mark.slow
def test_a_killed_run_resumes_complete_and_identical(capsys):
    path = Path(__file__).parents[1] / "benchmarks" / "fault_injection.py"
    spec = importlib.util.spec_from_file_location("fault_injection", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--trials", "2"]) == 0  # one kill while writing demonstrations, one in the warm-up
    out = capsys.readouterr().out
    assert "2 of 2 runs (2 of them killed) finished complete" in out and out.count(": killed,") == 2
