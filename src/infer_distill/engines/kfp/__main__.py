import sys

from infer_distill.engines.kfp import main

sys.exit(main())
