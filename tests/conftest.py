import os
import tempfile

# Headless pygame for render_mode="human" tests; no audio device either.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# Importing alfworld creates $ALFWORLD_DATA; keep it out of the home directory.
os.environ.setdefault("ALFWORLD_DATA", tempfile.mkdtemp(prefix="alfworld-data-"))
