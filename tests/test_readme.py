"""The README's library snippet works as written with the embedded model and prints what the README shows."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


@pytest.mark.slow
def test_readme_library_snippet_prints_what_the_readme_shows(smollm, monkeypatch):
    import hogwild_ref.models

    library = README.read_text().split("## Library", 1)[1].split("\n## ", 1)[0]
    blocks = _blocks(library)
    code = next(body for lang, body in blocks if lang == "python")
    shown = next(body for lang, body in blocks if lang == "")
    monkeypatch.setattr(hogwild_ref.models, "load_default", lambda *a, **k: smollm)  # the session's copy
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    expected = shown.strip().splitlines()
    assert printed[: len(expected)] == expected
    assert "answer" not in printed[0]  # the finisher no longer copies the prompt's \boxed{answer}
