import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set-up: the two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert "vlm-cards train" in main_job and "--model tiny" in main_job
    assert "pytest" in tests
    for command in commands:
        assert command.startswith("python3 -m pip install torch==2.13.0 && ")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _setup_commands()[1].split("torch==2.13.0 && ", 1)[1] in ci
    assert "torch==2.13.0" in ci.split(_setup_commands()[1].split("torch==2.13.0 && ", 1)[1])[0]


def test_readme_pictures_exist():
    readme = (ROOT / "README.md").read_text()
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme):
        assert (ROOT / path).is_file(), path


def test_readme_env_example_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The env suite alone", 1)[1]
    example = re.search(r"```python\n(.+?)\n```", section, flags=re.S).group(1)
    assert len(example.splitlines()) <= 12  # the short example a newcomer reads first
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - our own README, not agent text
    lines = capsys.readouterr().out.strip().splitlines()
    assert any('"action"' in line for line in lines)  # the prompt was printed
    assert lines[-1].startswith("8 True [")  # parsed action, valid, and the formula list


def test_readme_is_a_manual_of_at_most_250_lines_without_dates():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250  # measurements and experiments go to docs/


@pytest.mark.parametrize("path", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))])
def test_readme_and_docs_hold_no_dates_or_issue_numbers(path):
    text = (ROOT / path).read_text()
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text)  # history stays in git
    assert not re.findall(r"(?<![\w&/])#\d+\b", text)  # nor issue numbers


def test_readme_links_point_at_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|examples)/[^)#]*)\)", readme):
        assert (ROOT / target).exists(), target
