"""`python -m moe_vs_dense ...` (and `accelerate launch -m moe_vs_dense train ...`)."""

import sys

from moe_vs_dense.cli import main

sys.exit(main())
