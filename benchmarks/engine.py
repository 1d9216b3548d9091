"""End-to-end ticks/s of the engine on the embedded model vs plain greedy decoding (see README.md).

A thin wrapper over ``hogwild-ref bench engine`` (the same flags, checks and output; ``--json`` for one
JSON object): ``python benchmarks/engine.py --threads 1 --workers 1 2 4 --ticks 32``.
"""

import sys

from hogwild_ref.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "engine", *sys.argv[1:]]))
