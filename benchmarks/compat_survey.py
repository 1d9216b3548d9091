"""Survey: which RoPE decoder families of the installed transformers run exactly under hogwild_ref (Spec §11.6).

For every causal-LM family transformers ships whose modeling code has a rotary embedding, build a tiny
random-weight config offline (:func:`hogwild_ref.models.tiny_family_config`), and run the compatibility
proof with ``allow_untested=True``. Prints one line per family: ``runs`` (proof passed: the probe's
pairing and the measured errors), ``refused`` (the reason), or ``not built`` (no tiny config loads).

    python benchmarks/compat_survey.py [--json] [FAMILY ...]
"""

from __future__ import annotations

import argparse
import json
import sys

from hogwild_ref.survey import rope_families, survey


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", metavar="FAMILY",
                        help="model types to survey (default: every RoPE decoder family of the installed transformers)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a line per family")
    args = parser.parse_args(argv)
    known = rope_families()
    unknown = [f for f in args.families if f not in known]
    if unknown:
        parser.error(f"not a RoPE decoder family of the installed transformers: {', '.join(unknown)} "
                     f"(known: {', '.join(known)})")
    rows = []
    for row in survey(args.families or known):
        rows.append(row)
        if not args.json:
            print(f"{row['family']:<22} {row['outcome']:<9} {row['detail']}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
