"""Kill a small main-job run at random points of every stage, resume it, and check what it left.

Each trial starts ``vlm-cards train`` (a few seconds' worth of every stage) in a child process that
kills itself with SIGKILL at a random call of one stage's work: writing a demonstration frame, a
vision warm-up step, an SFT step, a PPO rollout env step, a checkpoint being written, an evaluation
step. The run is then resumed (``--resume``) until it finishes, and checked against one run that was
never interrupted:

* every output is there and whole (results with both rows, the final agent, the pictures);
* no torn file is taken as valid (every checkpoint and agent zip reads whole);
* the demonstrations and the SFT checkpoint are byte-identical to the uninterrupted run's;
* PPO made exactly the env steps and updates asked for.

    python benchmarks/fault_injection.py --trials 20

It prints one line per trial and the count of trials that passed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A run small enough to finish in seconds: 8 demonstrations, 2 warm-up and 2 SFT steps, PPO over
# 16 env steps (2 envs x 4 steps: 2 updates of 1 epoch), 2 evaluation episodes of 2 steps per agent.
RUN = ["--demos", "8", "--vision-warmup-steps", "2", "--sft-steps", "2", "--sft-batch-size", "4",
       "--ppo-timesteps", "16", "--n-envs", "2", "--n-steps", "4", "--batch-size", "8", "--n-epochs", "1",
       "--eval-episodes", "2", "--max-new-tokens", "24", "--ppo-check-episodes", "2", "--max-episode-steps", "2",
       "--no-progress", "--device", "cpu",
       "--ppo-stop-success", "0"]  # every env step is made (2 validation episodes can be won by chance)
PPO_TIMESTEPS, PPO_UPDATES = 16, 2

# stage -> (object to patch, attribute, how many calls the stage makes at most)
KILL_POINTS = {
    "demos": ("PIL.Image.Image", "save", 8),
    "warm-up": ("vlm_policy.training.sft", "image_token_features", 3),
    "sft": ("vlm_policy.training.sft", "answer_loss", 2),
    "ppo rollout": ("stable_baselines3.common.vec_env.dummy_vec_env.DummyVecEnv", "step_wait", 8),
    # SB3 writes 3 zip entries with writestr per save: 2 checkpoints and the final agent.
    "checkpoint save": ("zipfile.ZipFile", "writestr", 9),
    "evaluation": ("vlm_policy.training.evaluation", "answer_tokens", 6),
}


def _child(out: str, kill: str | None) -> None:
    """Runs the pipeline in this process, killing it at the ``stage:N``-th call of that stage's work."""
    import importlib

    import torch

    torch.set_num_threads(1)  # the same numbers in every process
    if kill:
        stage, nth = kill.rsplit(":", 1)
        module_name, attribute, _ = KILL_POINTS[stage]
        try:
            owner = importlib.import_module(module_name)
        except ModuleNotFoundError:  # a class path: import its module and take the class
            module_name, class_name = module_name.rsplit(".", 1)
            owner = getattr(importlib.import_module(module_name), class_name)
        original = getattr(owner, attribute)
        calls = {"n": 0}

        def killing(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        setattr(owner, attribute, killing)
    from vlm_policy.training.cli import main

    sys.exit(main(["train", "--out-dir", out, "--resume", *RUN]))


#: The child runs import the pipeline's stack once, in multiprocessing's fork server, and fork from it: a run
#: then starts in a fraction of a second instead of spending about 6 s of CPU on imports.
CHILD_PRELOAD = ["torch", "transformers", "stable_baselines3", "peft", "matplotlib.pyplot", "vlm_policy.training.cli",
                 "vlm_policy.training.pipeline", "vlm_policy.models.tiny", "transformers.processing_utils"]
#: ``__name__`` of this file when :func:`_run` executes it in a child (``runpy``: the child needs no import
#: name for this script, which tests load from its path).
CHILD_RUN_NAME = "__fault_injection_child__"


def _run(out: Path, kill: str | None = None) -> int:
    """One run of the pipeline into ``out`` in a child process; its exit status (``-SIGKILL`` when killed)."""
    import multiprocessing
    import runpy

    if "forkserver" not in multiprocessing.get_all_start_methods():
        command = [sys.executable, __file__, "--child", str(out)] + (["--kill", kill] if kill else [])
        return subprocess.run(command, capture_output=True, text=True).returncode
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(CHILD_PRELOAD)  # no effect where this process's server already runs
    child = context.Process(target=runpy.run_path, args=(__file__,),
                            kwargs={"run_name": CHILD_RUN_NAME, "init_globals": {"CHILD_ARGS": (str(out), kill)}})
    child.start()
    child.join()
    return child.exitcode


def _quiet_child(out: str, kill: str | None) -> None:
    """:func:`_child` with the run's printing (and any traceback) discarded, as a subprocess's captured output was."""
    import threading

    from tqdm import tqdm

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    # tqdm's default lock is a multiprocessing semaphore, registered with the parent's resource tracker, which
    # warns of it as leaked when the child is killed; one process needs only a thread lock.
    tqdm.set_lock(threading.RLock())
    _child(out, kill)


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        hasher.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return hasher.hexdigest()


def _check(out: Path, reference: Path) -> list[str]:
    """What is wrong with a finished run (nothing: an empty list)."""
    from vlm_policy.agents import checkpoint_problem, read_agent_data

    problems = []
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    if set(results) != {"after SFT", "after PPO"}:
        problems.append(f"results rows {sorted(results)}")
    for name in ("learning_curve.png", "episode_strip.png", "ppo/final.zip", "config.json"):
        if not (out / name).is_file():
            problems.append(f"missing {name}")
    for agent in [out / "ppo" / "final.zip", *(out / "ppo" / "checkpoints").glob("rl_model_*_steps.zip")]:
        problem = checkpoint_problem(agent) if agent.is_file() else None
        if problem:
            problems.append(f"torn {agent.name}: {problem}")
    if (out / "ppo" / "final.zip").is_file():
        data = read_agent_data(out / "ppo" / "final.zip")
        if (data["num_timesteps"], data["_n_updates"]) != (PPO_TIMESTEPS, PPO_UPDATES):
            problems.append(f"PPO made {data['num_timesteps']} env steps and {data['_n_updates']} updates")
    for stage in ("demos", "sft"):
        if _digest(out / stage) != _digest(reference / stage):
            problems.append(f"{stage} differs from the uninterrupted run's")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--kill", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.kill)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="fault_injection_"))
    start = time.perf_counter()
    reference = root / "uninterrupted"
    if _run(reference) != 0:
        raise SystemExit("the uninterrupted run failed")
    print(f"uninterrupted run: {time.perf_counter() - start:.0f} s", flush=True)
    passed = killed_runs = 0
    stages = list(KILL_POINTS)
    for trial in range(args.trials):
        stage = stages[trial % len(stages)]
        nth = rng.randint(1, KILL_POINTS[stage][2])
        out = root / f"trial{trial:02d}"
        first = _run(out, f"{stage}:{nth}")
        resumes, finished = 0, first == 0
        while not finished and resumes < 3:  # a resumed run finishes at once; three tries are plenty
            resumes += 1
            finished = _run(out) == 0
        problems = _check(out, reference)
        killed = "killed" if first == -signal.SIGKILL else f"exit {first} (the kill point was not reached)"
        print(f"trial {trial:2d}: {stage} call {nth}: {killed}, {resumes} resume(s): "
              f"{'ok' if not problems else '; '.join(problems)}", flush=True)
        passed += not problems
        killed_runs += first == -signal.SIGKILL
        shutil.rmtree(out, ignore_errors=True)
    print(f"\n{passed} of {args.trials} runs ({killed_runs} of them killed) finished complete and identical to the "
          f"uninterrupted one ({time.perf_counter() - start:.0f} s)")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if passed == args.trials else 1


if __name__ == "__main__":
    raise SystemExit(main())
if __name__ == CHILD_RUN_NAME:
    _quiet_child(*globals()["CHILD_ARGS"])
