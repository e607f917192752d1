"""The main job's hold on its ``--out-dir``: one run at a time, and the leftovers of killed runs cleared.

Two runs writing one folder at once would leave records that contradict its agent, so a run holds an
OS file lock (``fcntl.flock``) on ``out_dir/.lock`` from its first write to its exit. The kernel
releases the lock however the process ends, so the lock of a killed run is simply taken over; the
file holds the holder's pid only to name it in the refusal.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlm_policy.checkpoints import TEMPORARY_MARK, remove_path

LOCK_FILE = ".lock"


class RunRefused(RuntimeError):
    """A run that would damage or contradict what its ``--out-dir`` holds; the message says what to do."""


class FolderInUse(RunRefused):
    """Another live process holds the output folder's lock."""


def check_out_dir(out: Path) -> None:
    """Refuses an ``--out-dir`` that exists and is not a folder."""
    if out.exists() and not out.is_dir():
        raise RunRefused(f"--out-dir {out} is a file, not a folder; choose a folder (it is created if missing)")


class FolderLock:
    """An exclusive lock on ``folder`` held by this process (``with FolderLock(out): ...``).

    :meth:`acquire` creates the folder if needed and raises :class:`FolderInUse`, naming the holder's pid,
    when another process holds it; :meth:`release` removes the lock file (and the folder, if the run
    left it empty).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._handle = None
        self._created_folder = False

    def acquire(self) -> None:
        import fcntl

        check_out_dir(self.folder)
        self._created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise FolderInUse(f"{self.folder} is in use by another run (pid {holder}); wait for it to end, "
                                  "or choose another --out-dir") from None
            # The holder before us may have removed the file between our open and our lock: then the lock
            # is on a file no other run can find, and we start again on the current one.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                handle.close()
                continue
            if os.fstat(handle.fileno()).st_ino == current.st_ino:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        self.path.unlink(missing_ok=True)  # while still held: a waiting run then finds a fresh file
        self._handle.close()
        self._handle = None
        if self._created_folder:
            try:
                self.folder.rmdir()  # only if the run wrote nothing (a refusal before its first stage)
            except OSError:
                pass

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def remove_stale_partials(folder: str | Path, name: str | None = None) -> list[Path]:
    """Removes the ``.partial-<pid>-*`` leftovers of writes killed midway (their process is gone) under
    ``folder``; returns what it removed. A live process's partial is left alone.

    :param name: only the leftovers of writes of ``folder / name``, looked for in ``folder`` alone
        (by default every leftover in the whole tree).
    """
    folder = Path(folder)
    candidates = folder.glob(f"{TEMPORARY_MARK}*-{name}") if name else folder.rglob(f"{TEMPORARY_MARK}*")
    removed = []
    for path in sorted(candidates):
        pid = path.name[len(TEMPORARY_MARK):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)) or not path.exists():
            continue
        remove_path(path)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
