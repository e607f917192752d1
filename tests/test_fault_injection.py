"""benchmarks/fault_injection.py keeps working: a run killed mid-stage resumes to complete outputs."""


import pytest
from helpers import load_script


@pytest.mark.slow
def test_a_killed_run_resumes_complete_and_identical(capsys):
    module = load_script("benchmarks/fault_injection.py")
    assert module.main(["--trials", "1"]) == 0  # one kill while writing demonstrations (the benchmark cycles through every stage)
    out = capsys.readouterr().out
    assert "1 of 1 runs (1 of them killed) finished complete" in out and out.count(": killed,") == 1
