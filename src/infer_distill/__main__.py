"""`python -m infer_distill`: the `infer-distill` command."""
import sys

from infer_distill.cli import main

sys.exit(main())
