"""Prints docs/cli.md, the command line's reference: ``python -m vlm_policy.training.cli_reference > docs/cli.md``."""

from vlm_policy.training.cli import cli_reference

if __name__ == "__main__":
    print(cli_reference(), end="")
