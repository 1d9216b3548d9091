"""Every Python block of ``docs/recipes.md`` runs as written (with the session's embedded model, 1 thread)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"


def _recipes() -> list[tuple[str, str]]:
    """(the section's title, its Python block) for every recipe of the page."""
    out = []
    for section in RECIPES.read_text(encoding="utf-8").split("\n## ")[1:]:
        title = section.splitlines()[0]
        out += [(title, code) for code in re.findall(r"```python\n(.*?)```", section, re.S)]
    return out


def test_the_page_has_every_recipe_and_is_in_the_nav():
    titles = [t for t, _ in _recipes()]
    assert len(titles) == 5
    for word in ("explicit segment table", "matrix", "model.generate", "finisher and snapshots", "resume"):
        assert any(word in t for t in titles), (word, titles)
    assert "recipes.md" in (RECIPES.parent.parent / "mkdocs.yml").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("title,code", _recipes(), ids=[t for t, _ in _recipes()])
def test_recipe_runs_as_written(smollm, monkeypatch, capsys, title, code):
    import torch

    import hogwild_ref.models

    monkeypatch.setattr(hogwild_ref.models, "load_default", lambda *a, **k: smollm)  # the session's copy
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, f"docs/recipes.md: {title}", "exec"), {"__name__": "recipe"})
    finally:
        torch.set_num_threads(threads)
    assert capsys.readouterr().out.strip()  # every recipe prints what it found
