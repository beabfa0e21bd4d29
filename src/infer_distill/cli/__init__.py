"""`infer-distill`: the command line (cli.commands: the parser and what each command runs; cli.show: what it prints)."""
from infer_distill.cli.commands import main

__all__ = ["main"]
