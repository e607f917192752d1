"""``run.json``: what a run folder's results were made with, so that a figure can be traced and redone.

Floating-point results differ between processors and thread counts, so a number without its machine is
half a result. Each invocation of the main job writes the package version and git commit (when run from
a checkout), the versions of the libraries that compute, the device and processor, the thread count,
the command line and the resolved settings; a later invocation into the same folder (a resume) keeps
the earlier records under ``"earlier"``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RUN_RECORD_FILE = "run.json"
#: The run's log: the stage headers and every line the main job prints, with the time of day.
TRAIN_LOG = "train.log"
LIBRARIES = ("torch", "transformers", "peft", "stable-baselines3", "gymnasium", "numpy")


def git_commit(directory: str | Path) -> dict[str, Any] | None:
    """The checkout's commit and whether it had changes (None when ``directory`` is not in a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def processor_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what the platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def run_record(settings: dict[str, Any], device: str) -> dict[str, Any]:
    """This invocation's record: versions, machine, command line and ``settings``."""
    import torch

    accelerator = torch.cuda.get_device_name(torch.device(device)) if str(device).startswith("cuda") else None
    return {
        "package_version": _version("gym-vlm-cards"),
        "git": git_commit(Path(__file__).resolve().parent),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "python": platform.python_version(),
        "device": str(device),
        "accelerator": accelerator,
        "processor": processor_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "command_line": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "settings": settings,
    }


def write_run_record(folder: str | Path, record: dict[str, Any]) -> Path:
    """Writes ``record`` as ``folder/run.json``, keeping the records already there under ``"earlier"``."""
    from vlm_policy.checkpoints import atomic_write_text

    path = Path(folder) / RUN_RECORD_FILE
    earlier: list[dict[str, Any]] = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            earlier = [*previous.pop("earlier", []), previous]
        except (OSError, ValueError, AttributeError):
            earlier = [{"unreadable_record": path.read_text(errors="replace")}]
    atomic_write_text(path, json.dumps({**record, "earlier": earlier}, indent=2))
    return path


def append_log_lines(path: str | Path, lines: list[str]) -> None:
    """Appends ``lines`` to the log at ``path``, each after the time of day (blank lines stay blank)."""
    if lines:
        stamp = time.strftime("%H:%M:%S")
        with Path(path).open("a") as log:
            log.writelines(f"{stamp} {line}\n" if line.strip() else "\n" for line in lines)


def _is_file(stream, path: Path) -> bool:
    """Whether ``stream`` writes into the file at ``path``."""
    try:
        opened, named = os.fstat(stream.fileno()), os.stat(path)
    except (OSError, AttributeError, ValueError):  # no file behind the stream, or none at the path yet
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


class LogTee:
    """While active (``with LogTee(path):``), what the process prints to standard output also goes, line by line
    with the time of day, to ``path``: the stage headers and every message of the stages, SB3's callbacks
    included. Progress bars are left out (they redraw with carriage returns or terminal control codes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stream = None
        self._partial = ""
        self._after_bar = False

    def __enter__(self) -> LogTee:
        self._stream = sys.stdout
        # Under `vlm-cards sweep` standard output is this log file already: only the timed lines go to it.
        self._echo = not _is_file(self._stream, self.path)
        sys.stdout = self
        return self

    def __exit__(self, *exc_info) -> None:
        if self._partial:
            self._append([self._partial])
            self._partial = ""
        sys.stdout = self._stream

    def write(self, text: str) -> int:
        written = self._stream.write(text) if self._echo else len(text)
        if "\r" in text or "\x1b" in text:  # a progress bar's redraw, not a line of the log
            self._after_bar = True
            return written
        if self._after_bar and text.startswith("\n") and not self._partial:
            text = text[1:]  # the end of the bar's line (print writes it apart)
        self._after_bar = False
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        self._append(lines)
        return written

    def _append(self, lines: list[str]) -> None:
        append_log_lines(self.path, lines)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the real stream's
        return getattr(self._stream, name)
