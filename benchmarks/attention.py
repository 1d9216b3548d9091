"""One layer's decode attention per backend vs single-sequence SDPA (see README.md).

A thin wrapper over ``hogwild-ref bench attention`` (the same flags, checks and output; ``--json`` for
one JSON object): ``python benchmarks/attention.py --threads 1 --contexts 1024 4096 --workers 4``.
"""

import sys

from hogwild_ref.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "attention", *sys.argv[1:]]))
