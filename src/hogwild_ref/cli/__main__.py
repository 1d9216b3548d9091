"""``python -m hogwild_ref.cli ...``: the same command line as ``hogwild-ref``."""

import sys

from . import main

sys.exit(main())
