import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).parents[1]


def answer(action: str) -> str:
    """A well-formed model answer naming ``action``."""
    return json.dumps({"thoughts": "test", "action": action})


def load_script(relative_path: str) -> ModuleType:
    """A script of the repository that is not in a package (``benchmarks/``, ``examples/``), as a module."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: What the tests' child processes import anyway (torch, transformers, SB3 and the policy: about 7 s of CPU a
#: process on the reference machine). A fork server imports it once; each child forks from it with it loaded.
CHILD_PRELOAD = ("torch", "transformers", "stable_baselines3", "peft", "vlm_policy.policy", "vlm_policy.distributed",
                 "vlm_policy.models.tiny", "vlm_policy.training.pipeline")


def preloaded_process_context():
    """multiprocessing's fork-server context, the server started with :data:`CHILD_PRELOAD` imported, for a
    test's child processes (spawn where the platform has no fork server). Forking the server, which never
    ran a torch op, is as safe as spawning; a server that an earlier test of this process started with
    another list still works, its children then import what they need themselves."""
    import multiprocessing
    from multiprocessing import forkserver

    from vlm_policy.subprocess_envs import SUBPROCESS_PRELOAD

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*CHILD_PRELOAD, *SUBPROCESS_PRELOAD])
    forkserver.ensure_running()
    return context
