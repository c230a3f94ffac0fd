"""``python -m grow_ir``: the ``grow-ir`` command."""

import os
import sys

from grow_ir.cli import main

status = main()
if "WORLD_SIZE" in os.environ:
    from grow_ir.growth.distributed import launched, leave

    if launched():  # one rank of a multi-process run (torchrun, or train --nproc)
        leave(status)
sys.exit(status)
