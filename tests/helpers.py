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
