import atexit
import os
import shutil
import tempfile

# Headless pygame for render_mode="human" tests; no audio device either.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


def _scratch_folder(variable: str, prefix: str) -> None:
    """Points ``variable`` at a temporary folder removed when the session ends (the xdist workers inherit the
    controller's, which removes it), unless the environment already names one."""
    if variable not in os.environ:
        os.environ[variable] = folder = tempfile.mkdtemp(prefix=prefix)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


# Importing alfworld creates $ALFWORLD_DATA: kept out of the home directory. SB3 makes a /tmp/SB3-<time> folder
# for every agent that logs nowhere unless $SB3_LOGDIR names one: the suite's share one, removed at the end.
_scratch_folder("ALFWORLD_DATA", "alfworld-data-")
_scratch_folder("SB3_LOGDIR", "sb3-logs-")

# The suite runs on two pytest-xdist workers (pyproject's addopts): one thread each, so that together they
# use the two cores of the reference machine without oversubscribing them (torch reads this at import).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


#: Seconds the slow tests of a module take on two cores (measured with --durations; a module not listed
#: counts 5 s a slow test). Only the order of the tests depends on them.
SLOW_MODULE_SECONDS = {"test_distributed": 95, "test_main_job": 75, "test_alfworld_pipeline": 64, "test_alfworld": 60,
                       "test_fault_injection": 34, "test_sweep": 24, "test_subprocess_envs": 20,
                       "test_real_checkpoint_paths": 16}


def pytest_collection_modifyitems(config, items):
    """Order for two workers: xdist's work stealing hands each worker one half of the list and lets it
    steal from the other's end, so each half starts with its share of the end-to-end (slow) tests, a
    module's together (they share fixtures), balanced by their measured time, and the quick tests fill
    in behind them. Without this the slow tests of the later modules met at the end of one worker's half."""
    slow_modules: dict[str, list] = {}
    quick = []
    for item in items:
        if item.get_closest_marker("slow") is not None:
            slow_modules.setdefault(item.module.__name__.rpartition(".")[2], []).append(item)
        else:
            quick.append(item)

    def seconds(module: str) -> float:
        return SLOW_MODULE_SECONDS.get(module, 5 * len(slow_modules[module]))

    halves: list[list] = [[], []]
    load = [0.0, 0.0]
    for module in sorted(slow_modules, key=seconds, reverse=True):  # longest first, each to the lighter half
        half = load.index(min(load))
        halves[half].extend(slow_modules[module])
        load[half] += seconds(module)
    split = max(0, len(items) // 2 - len(halves[0]))
    items[:] = halves[0] + quick[:split] + halves[1] + quick[split:]
