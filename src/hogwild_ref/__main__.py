"""``python -m hogwild_ref ...``: the command line (:mod:`hogwild_ref.cli`), e.g. under ``torchrun``."""

import sys

from .cli import main

sys.exit(main())
