"""Misuse of the commands and their folders: refused in one line, before anything is written, nothing lost."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlm_policy.checkpoints import TEMPORARY_MARK
from vlm_policy.training import cli
from vlm_policy.training.run_folder import FolderInUse, FolderLock, remove_stale_partials

HOLD_LOCK = "import sys, time; from vlm_policy.training.run_folder import FolderLock; lock = FolderLock(sys.argv[1]); lock.acquire(); " \
            "print('held', flush=True); time.sleep(120)"


@pytest.fixture
def held_folder(tmp_path):
    """A folder whose lock another live process holds; yields (folder, that process)."""
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder
    holder.kill()
    holder.wait()


def _files(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_second_run_into_a_held_folder_is_refused_naming_the_holder(held_folder, capsys):
    folder, holder = held_folder
    with pytest.raises(FolderInUse, match=f"pid {holder.pid}"):
        FolderLock(folder).acquire()
    before = _files(folder)
    assert cli.main(["train", "--out-dir", str(folder), "--demos", "8", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"in use by another run (pid {holder.pid})" in error and len(error.strip().splitlines()) == 1
    assert _files(folder) == before  # the refused run wrote nothing


def test_the_lock_of_a_killed_run_is_taken_over(held_folder):
    folder, holder = held_folder
    holder.kill()
    holder.wait()
    with FolderLock(folder) as lock:
        assert lock.path.read_text() == str(os.getpid())
    assert not lock.path.exists()


def test_a_partial_of_a_dead_process_is_removed_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "ppo" / f"{TEMPORARY_MARK}{dead.stdout.strip()}-final.zip"
    live = tmp_path / f"{TEMPORARY_MARK}{os.getppid()}-results.json"
    stale.parent.mkdir()
    stale.write_text("torn")
    live.write_text("being written")
    assert remove_stale_partials(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--device", "gpu7"], "--device"),
    (["train", "--env", "gym_cards/Nope-v0"], "unknown env id"),
    (["eval", "--device", "gpu7"], "--device"),
    (["eval", "--seed", "-1"], "--seed"),
    (["demos", "--image-size", "10"], "--image-size"),
    (["demos", "--seed", "-1"], "--seed"),
    (["baseline", "--seed", "-1"], "--seed"),
    (["eval", "--env", "no_such_module:my/Task-v0"], "cannot be imported"),
])
def test_bad_values_are_refused_at_parse_time_writing_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    where = ["--out", str(out)] if argv[0] == "demos" else ["--out-dir", str(out)] if argv[0] == "train" else []
    with pytest.raises(SystemExit) as stop:
        cli.main(argv + where)
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_user_errors_at_run_time_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    missing = tmp_path / "no_model"
    corrupt = tmp_path / "corrupt"
    (corrupt / "stages").mkdir(parents=True)
    (corrupt / "stages" / "demos.json").write_text('{"demos": 8')
    (corrupt / "demos").mkdir()  # the stage made output, so its record is read
    cases = [(["--out-dir", str(a_file)], "is a file, not a folder"),
             (["--out-dir", str(tmp_path / "m"), "--model", str(missing)], "neither 'tiny', a local directory"),
             (["--out-dir", str(corrupt)], "demos.json")]
    for extra, message in cases:
        assert cli.main(["train", "--demos", "8", "--no-progress", *extra]) == 2, extra
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "m").exists()  # the refused run left no folder behind


def test_an_answer_budget_below_the_demonstrations_is_one_line(tmp_path, capsys):
    argv = ["train", "--demos", "8", "--no-progress", "--max-new-tokens", "3", "--out-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "--max-new-tokens 3 is shorter than" in error and len(error.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="--max-new-tokens 3"):  # and the traceback when asked for
        os.environ[cli.TRACEBACK_VARIABLE] = "1"
        try:
            cli.main(argv)
        finally:
            del os.environ[cli.TRACEBACK_VARIABLE]


def test_every_command_resolves_env_ids_alike(tmp_path, monkeypatch):
    from gym_vlm_cards.registration import resolve_env_id

    (tmp_path / "my_tasks_module.py").write_text(textwrap.dedent("""
        import gymnasium as gym
        gym.register("my_tasks/Same-v0", entry_point="gym_vlm_cards.tasks.numberline:NumberLineEnv")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_env_id("my_tasks_module:my_tasks/Same-v0") == "my_tasks_module:my_tasks/Same-v0"
    assert resolve_env_id("gym_vlm_cards:gym_cards/EZPoints-v0") == "gym_cards/EZPoints-v0"
    with pytest.raises(ValueError, match="module:id"):
        resolve_env_id("my_tasks/Other-v0")
    # In a fresh process nothing of ALFWorld is imported yet: the id alone brings its module in.
    fresh = subprocess.run([sys.executable, "-c", "from gym_vlm_cards.registration import resolve_env_id; "
                            "import gymnasium; print(gymnasium.spec(resolve_env_id('alfworld/ALFWorld-v0')).id)"],
                           capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == "alfworld/ALFWorld-v0"
    from gym_vlm_cards.evaluate import main as evaluate_main

    assert evaluate_main(["--env", "my_tasks_module:my_tasks/Same-v0", "--agent", "random", "--episodes", "2"]) == 0


def test_a_demonstration_set_is_whole_or_absent(tmp_path, monkeypatch):
    from vlm_policy.training import demos

    out = tmp_path / "demos"
    real_steps = demos._oracle_steps

    def killed_midway(*args, **kwargs):
        for index, step in enumerate(real_steps(*args, **kwargs)):
            if index == 3:
                raise KeyboardInterrupt
            yield step

    monkeypatch.setattr(demos, "_oracle_steps", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        demos.write_demonstrations("gym_cards/NumberLine-v0", 8, out, env_kwargs={"image_size": 32})
    assert not out.exists() and not list(tmp_path.iterdir())
    monkeypatch.setattr(demos, "_oracle_steps", real_steps)
    # What a SIGKILL leaves (a partial of a dead process) goes with the next write of the set.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"{TEMPORARY_MARK}{dead.stdout.strip()}-demos").mkdir()
    path = demos.write_demonstrations("gym_cards/NumberLine-v0", 8, out, env_kwargs={"image_size": 32})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos"]
    assert json.loads((out / demos.MANIFEST_FILE).read_text())["examples"] == 8
    assert len(demos.read_demonstrations(out)) == 8
    # A reader refuses a set that lost lines, or whose last line or an image is cut off.
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5]))
    with pytest.raises(ValueError, match="incomplete .5 lines; its manifest says 8"):
        demos.read_demonstrations(out)
    path.write_text("".join(lines)[:-1])
    (out / demos.MANIFEST_FILE).unlink()
    with pytest.raises(ValueError, match="last line is cut off"):
        demos.read_answers(path)
    path.write_text("".join(lines))
    (out / "images" / "000004.png").unlink()
    with pytest.raises(FileNotFoundError, match="000004.png, which is missing"):
        demos.read_demonstrations(out)
    # A folder of other things is not replaced by a set.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demonstration set"):
        demos.write_demonstrations("gym_cards/NumberLine-v0", 2, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"



def test_a_stage_that_failed_before_its_output_binds_no_setting(tmp_path):
    from vlm_policy.training.configs import TrainConfig
    from vlm_policy.training.stage_records import StageRecords

    out = tmp_path / "run"
    failed = StageRecords(out, TrainConfig.from_settings(out_dir=str(out), seed=5))
    failed.begin("demos")  # then the demonstrations failed: no demos/ was made
    corrected = StageRecords(out, TrainConfig.from_settings(out_dir=str(out), seed=0))
    assert corrected.check({}, overwrite=False) == []
    (out / "demos").mkdir()  # once the stage has an output, its record stands
    with pytest.raises(RuntimeError, match="seed: 5 -> 0"):
        corrected.check({}, overwrite=False)
