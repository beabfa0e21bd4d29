"""`python -m infer_distill`: the `infer-distill` command."""
import sys

from .cli import main

sys.exit(main())
