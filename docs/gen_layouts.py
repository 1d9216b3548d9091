"""Render the layout diagrams of the documentation from the code (Spec §4).

Every figure is drawn from the views that :mod:`hogwild_ref.segments` builds, so the pictures cannot
drift from the implementation. For W = 2 and W = 4 and each layout preset, one SVG shows one row per
worker and one box per segment of its view, left to right in view order, with widths proportional to
example segment lengths and the view offset ``o_w(s)`` under the start of every box.

Run as a script (``python docs/gen_layouts.py [OUT_DIR]``) or as an MkDocs hook: ``mkdocs.yml`` lists
this file under ``hooks:``, and :func:`on_pre_build` regenerates ``docs/assets/layouts/*.svg`` before
every build. The SVGs are build outputs, not sources: they are not committed.
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = Path(__file__).resolve().parent / "assets" / "layouts"

WORKER_COUNTS = (2, 4)

#: Example lengths (tokens). Only the proportions matter.
PROMPT_LENGTH = 40
STATIC_LENGTHS = {"others_header": 6, "separator": 3, "own_header": 6}
STEP_LENGTHS = (14, 9, 17, 11)  # cur_j in interleaved / combined
OUTPUT_LENGTHS = (22, 14, 27, 18)  # out_j in contiguous

PX_PER_TOKEN = 8
ROW_HEIGHT = 34
ROW_GAP = 22
LEFT = 96
TOP = 40
RIGHT_PAD = 30
LEGEND = 22

WORKER_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1")
STATIC_COLOURS = {"history": "#5a6270", "prompt": "#5a6270", "header": "#c9ced6", "separator": "#e3e6ea"}


def _import_segments() -> Any:
    try:
        from hogwild_ref import prompts, segments
    except ImportError:  # running from a source checkout without an installed package
        sys.path.insert(0, str(ROOT / "src"))
        from hogwild_ref import prompts, segments
    return segments, prompts


def example_table(layout: str, workers: int) -> Any:
    """The preset table of ``layout`` for ``workers`` workers, with the example lengths."""
    segments, _ = _import_segments()
    if layout == "combined":
        table = segments.make_layout(layout, workers, PROMPT_LENGTH, **STATIC_LENGTHS)
    else:
        table = segments.make_layout(layout, workers, PROMPT_LENGTH)
    lengths = {}
    for s in table.segments:
        if s.writer is not None:
            source = OUTPUT_LENGTHS if layout == "contiguous" else STEP_LENGTHS
            lengths[s.id] = source[s.writer % len(source)]
    return table.with_lengths(lengths)


def _fill(table: Any, sid: str) -> tuple[str, str]:
    """(fill colour, text colour) of a segment box."""
    seg = table[sid]
    if seg.writer is not None:
        return WORKER_COLOURS[seg.writer % len(WORKER_COLOURS)], "#ffffff"
    if sid == table.history or sid == "prompt":
        return STATIC_COLOURS["history"], "#ffffff"
    if sid.startswith("sep_"):
        return STATIC_COLOURS["separator"], "#333333"
    return STATIC_COLOURS["header"], "#333333"


def _label(table: Any, sid: str) -> str:
    if sid == table.history:
        return f"{sid} (history)"
    return sid


def _fit(label: str, sid: str, box: float) -> tuple[str, int]:
    """A label and font size that fit in a box ``box`` pixels wide (approximate glyph widths)."""
    short = {"others_header": "others", "own_header": "own"}.get(sid, sid.replace("sep_", "s").replace("cur_", "c"))
    for text in (label, sid, short):
        for size in (11, 9, 8):
            if len(text) * size * 0.58 <= box - 3:
                return text, size
    return short, 7


def render_svg(layout: str, workers: int) -> str:
    """The SVG text of one diagram."""
    _, prompts = _import_segments()
    table = example_table(layout, workers)
    names = prompts.default_names(workers)
    width = LEFT + max(table.view_length(w) for w in range(workers)) * PX_PER_TOKEN + RIGHT_PAD
    height = TOP + workers * (ROW_HEIGHT + ROW_GAP) + LEGEND
    title = f"{layout} layout, W = {workers}: the view of every worker (example lengths)"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="4" y="18" font-size="13" font-weight="bold" fill="#222">{escape(title)}</text>',
    ]
    for w in range(workers):
        y = TOP + w * (ROW_HEIGHT + ROW_GAP)
        out.append(
            f'<text x="4" y="{y + ROW_HEIGHT / 2 + 4}" font-size="12" fill="#222">'
            f"{escape(names[w])} (w={w})</text>"
        )
        offsets = table.offsets(w)
        own = table.write_segment(w)
        for sid in table.views[w]:
            x = LEFT + offsets[sid] * PX_PER_TOKEN
            length = table.length(sid)
            box = length * PX_PER_TOKEN
            fill, ink = _fill(table, sid)
            stroke = ' stroke="#111" stroke-width="2.5"' if sid == own else ' stroke="#ffffff" stroke-width="1"'
            out.append(
                f'<rect x="{x}" y="{y}" width="{box}" height="{ROW_HEIGHT}" fill="{fill}"{stroke}>'
                f"<title>{escape(sid)}: length {length}, offset {offsets[sid]} in {escape(names[w])}'s view"
                f"{' (write segment)' if sid == own else ''}</title></rect>"
            )
            label, size = _fit(_label(table, sid), sid, box)
            out.append(
                f'<text x="{x + box / 2}" y="{y + ROW_HEIGHT / 2 + 4}" font-size="{size}" fill="{ink}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
            out.append(
                f'<text x="{x + 1}" y="{y + ROW_HEIGHT + 12}" font-size="9" fill="#555">{offsets[sid]}</text>'
            )
        end = LEFT + table.view_length(w) * PX_PER_TOKEN
        out.append(
            f'<text x="{end + 1}" y="{y + ROW_HEIGHT + 12}" font-size="9" fill="#555">{table.view_length(w)}</text>'
        )
    legend = "thick outline: the worker's write segment; numbers: view offsets o_w(s) and the view length"
    if layout == "combined":
        legend += "; others/own: others_header/own_header; sJ: sep_J"
    out.append(f'<text x="4" y="{height - 8}" font-size="10" fill="#555">{escape(legend)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def generate(out_dir: Path = OUT_DIR) -> list[Path]:
    """Write ``<layout>-w<W>.svg`` for every layout and W; only files whose content changed are rewritten
    (so ``mkdocs serve`` does not rebuild in a loop). Returns the paths."""
    segments, _ = _import_segments()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for layout in segments.LAYOUTS:
        for workers in WORKER_COUNTS:
            path = out_dir / f"{layout}-w{workers}.svg"
            text = render_svg(layout, workers)
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
            paths.append(path)
    return paths


def on_pre_build(config: Any, **kwargs: Any) -> None:
    """MkDocs hook: regenerate the diagrams before the files are collected."""
    generate(Path(config["docs_dir"]) / "assets" / "layouts")


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        print(p)
