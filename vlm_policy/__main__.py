"""``python -m vlm_policy`` is the ``vlm-cards`` command line (so ``torchrun -m vlm_policy`` works too)."""

from vlm_policy.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
