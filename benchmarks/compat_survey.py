"""Survey: which RoPE decoder families of the installed transformers run exactly under hogwild_ref (Spec §11.6).

For every causal-LM family transformers ships whose modeling code has a rotary embedding, build a tiny
random-weight config offline (:func:`hogwild_ref.models.tiny_family_config`), and run the compatibility
proof with ``allow_untested=True``. Prints one line per family: ``runs`` (proof passed: the probe's
pairing and the measured errors), ``refused`` (the reason), or ``not built`` (no tiny config loads).

    python benchmarks/compat_survey.py [--json] [FAMILY ...]
"""

from __future__ import annotations

import json
import sys

from hogwild_ref.survey import survey


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    families = [a for a in argv if not a.startswith("--")] or None
    rows = []
    for row in survey(families):
        rows.append(row)
        if not as_json:
            print(f"{row['family']:<22} {row['outcome']:<9} {row['detail']}", flush=True)
    if as_json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
