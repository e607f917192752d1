import os
import tempfile

# Headless pygame for render_mode="human" tests; no audio device either.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# Importing alfworld creates $ALFWORLD_DATA; keep it out of the home directory.
os.environ.setdefault("ALFWORLD_DATA", tempfile.mkdtemp(prefix="alfworld-data-"))

# The suite runs on two pytest-xdist workers (pyproject's addopts): one thread each, so that together they
# use the two cores of the reference machine without oversubscribing them (torch reads this at import).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
