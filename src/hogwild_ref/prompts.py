"""Prompt templates for W Hogwild workers (Spec §7).

Pure Python: no torch, no transformers. The engine passes a tokenizer's
``apply_chat_template`` in when it has one; everything else is plain strings.

Placeholders
------------
Templates are filled by :func:`fill`, which substitutes only the placeholders it is
given (``{workers}``, ``{names}``, ``{problem}``, ``{name}``, ``{k}``) in one pass and
leaves every other brace alone. So prompts may contain LaTeX such as ``\\boxed{}``
without doubling braces, and a problem text containing ``{names}`` is not expanded
again. (This is deliberately *not* :meth:`str.format`: ``{{`` is not an escape.)
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BASE_NAMES",
    "DEFAULT_COLLAB_PROMPT",
    "DEFAULT_FINISHER",
    "DEFAULT_STEP_PREFIX",
    "PromptTemplates",
    "default_names",
    "fill",
    "format_names",
    "load_templates",
    "render_prompt",
    "segment_texts",
]

#: Names given to the first workers, in order (Spec §7). Worker ``w >= len(BASE_NAMES)``
#: is called ``"Worker {w+1}"``.
BASE_NAMES: tuple[str, ...] = (
    "Alice",
    "Bob",
    "Carol",
    "Dave",
    "Eve",
    "Frank",
    "Grace",
    "Heidi",
    "Ivan",
    "Judy",
)

#: Step header written at the start of every step (Spec §6.2, §7); ``{name}`` and the
#: 1-based step index ``{k}`` are substituted.
DEFAULT_STEP_PREFIX = "**{name} [{k}]:** "

#: Collaboration prompt appended after a step prefix when it is due (Spec §6.3, §7).
#: Inserted literally (no placeholders).
DEFAULT_COLLAB_PROMPT = (
    "Before I go on: is another worker already doing what I planned to do next? (yes/no): "
)

#: s1-style finisher fed when the budget runs out (Spec §6.6, §7). It ends inside an open
#: ``\\boxed{`` so that the model's continuation is the answer. Inserted literally.
DEFAULT_FINISHER = (
    "\n\nOut of time. Putting together what has been found so far, "
    "the final answer is \\boxed{"
)

_DEFAULT_SYSTEM = (
    "You are one of several workers solving a single problem together. "
    "Workers ({workers} in total): {names}. "
    "All of you write into one shared workspace. Everyone sees the finished steps of every "
    "worker (the shared history) and, live, the step each other worker is writing right now, "
    "even before it is finished.\n"
    "How to work:\n"
    "- Write your reasoning as short steps. Each step starts with your name and its number, "
    "like **Name [3]:**, and ends with a complete sentence followed by a blank line.\n"
    "- Read what the others are doing before you start something. Do not redo work that "
    "someone else is already doing; split the problem between you and take an open part.\n"
    "- Check the others' results when it helps, and say so when you find a mistake.\n"
    "- When you know the final answer, write it once inside \\boxed{}."
)


def fill(template: str, /, **values: Any) -> str:
    """Substitute ``{key}`` for each given key in ``template``, in one pass (Spec §7).

    Only the keys passed are replaced; every other brace is kept as it is, so LaTeX like
    ``\\boxed{x}`` needs no escaping. Values are inserted with :func:`str` and are never
    themselves scanned for placeholders.

    >>> fill("**{name} [{k}]:** \\\\boxed{}", name="Alice", k=2)
    '**Alice [2]:** \\\\boxed{}'
    """
    if not values:
        return template
    pattern = re.compile("\\{(" + "|".join(re.escape(k) for k in values) + ")\\}")
    return pattern.sub(lambda m: str(values[m.group(1)]), template)


def default_names(workers: int) -> tuple[str, ...]:
    """Names of ``workers`` workers: Alice, Bob, Carol, ..., then "Worker 11", ... (Spec §7).

    Raises:
        ValueError: if ``workers < 1``.
    """
    if not isinstance(workers, numbers.Integral) or isinstance(workers, bool):
        raise TypeError(f"workers must be an int, got {type(workers).__name__}")
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}; pass the number of parallel workers")
    return tuple(
        BASE_NAMES[w] if w < len(BASE_NAMES) else f"Worker {w + 1}" for w in range(workers)
    )


def format_names(names: Sequence[str]) -> str:
    """Join names for prose: "Alice", "Alice and Bob", "Alice, Bob and Carol" (Spec §7)."""
    names = list(names)
    if not names:
        raise ValueError("format_names needs at least one name")
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


@dataclass(frozen=True)
class PromptTemplates:
    """Every text the workers are shown, overridable with :func:`dataclasses.replace` (Spec §7).

    Placeholders (see :func:`fill`): ``system`` takes ``{workers}`` and ``{names}``;
    ``problem`` takes ``{problem}``; ``step_prefix`` takes ``{name}`` and ``{k}``. The other
    texts are used literally.

    Attributes:
        system: instructions for the team; folded into the user turn by default.
        problem: the user's problem, ``{problem}`` substituted.
        history_header: opens the shared history; ends the shared prompt segment.
        others_header: combined layout: opens the others' unfinished steps.
        separator: combined layout: pivot after each other worker's unfinished step.
        own_header: combined layout: opens the worker's own step. Shared by all workers,
            so it must not name anyone.
        step_prefix: header of every step (Spec §6.2).
        collab_prompt: collaboration prompt (Spec §6.3).
        finisher: s1-style finisher ending in an open ``\\boxed{`` (Spec §6.6).
    """

    system: str = _DEFAULT_SYSTEM
    problem: str = "Problem: {problem}"
    history_header: str = "\n\n### Shared history: finished steps of all workers\n\n"
    others_header: str = "\n\n### Still being written by the other workers\n\n"
    separator: str = " <...>\n\n"
    own_header: str = "\n\n### Your own step, still being written\n\n"
    step_prefix: str = DEFAULT_STEP_PREFIX
    collab_prompt: str = DEFAULT_COLLAB_PROMPT
    finisher: str = DEFAULT_FINISHER

    def system_text(self, workers: int, names: Sequence[str] | None = None) -> str:
        """The system prompt for ``workers`` workers named ``names`` (Spec §7)."""
        names = _check_names(workers, names)
        return fill(self.system, workers=workers, names=format_names(names))

    def problem_text(self, problem: str) -> str:
        """The problem statement, ``{problem}`` substituted (Spec §7)."""
        return fill(self.problem, problem=problem)

    def prefix(self, name: str, k: int) -> str:
        """The step prefix of step ``k`` (1-based) of worker ``name`` (Spec §6.2, §7)."""
        return fill(self.step_prefix, name=name, k=k)

    @classmethod
    def compact(cls) -> PromptTemplates:
        """Short instructions and one-line headers, for small models (Spec §7).

        Models of ~100M parameters lose the thread in long instructions and Markdown headers;
        this preset keeps the same structure with as little text as possible.
        """
        return cls(
            system=(
                "{names} solve the problem together, step by step. They see each other's steps "
                "as they are written. Each step is one short sentence that ends with a period. "
                "Put the final answer in \\boxed{}."
            ),
            history_header="\n",
            others_header="\n",
            separator="\n",
            own_header="\n",
        )


#: Named template presets (CLI ``--prompts``).
PRESETS = {"default": PromptTemplates, "compact": PromptTemplates.compact}


def _check_names(workers: int, names: Sequence[str] | None) -> tuple[str, ...]:
    if names is None:
        return default_names(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    names = tuple(names)
    if len(names) < workers:
        raise ValueError(
            f"got {len(names)} names for {workers} workers; pass at least {workers} names "
            "or names=None for the defaults"
        )
    return names[:workers]


def render_prompt(
    problem: str,
    workers: int,
    tokenizer_apply_chat_template: Callable[..., Any] | None,
    templates: PromptTemplates = PromptTemplates(),
    fold_system_into_user: bool = True,
    *,
    names: Sequence[str] | None = None,
) -> str:
    """Text of the shared prompt segment: the chat conversation, then the history header (Spec §7).

    The conversation is one user turn holding the system prompt and the problem (folded by
    default, since some small models ignore or lack a system role), or a system turn and a
    user turn when ``fold_system_into_user`` is False. It is rendered with
    ``tokenizer_apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``
    (e.g. ``tokenizer.apply_chat_template``), so it ends with the assistant's generation
    prompt; ``templates.history_header`` follows. When no chat template function is given, a
    plain-text rendering (``"User: ...\\n\\nAssistant:"``) is used.

    Args:
        problem: the problem statement.
        workers: number of workers (>= 1).
        tokenizer_apply_chat_template: chat template function, or None for plain text.
        templates: the texts to use.
        fold_system_into_user: put the system prompt at the top of the user turn.
        names: worker names (default :func:`default_names`).
    """
    system = templates.system_text(workers, names)
    user = templates.problem_text(problem)
    if fold_system_into_user:
        messages = [{"role": "user", "content": f"{system}\n\n{user}"}]
    else:
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
    if tokenizer_apply_chat_template is None:
        conversation = "".join(
            f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages
        ) + "Assistant:"
    else:
        conversation = tokenizer_apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        if not isinstance(conversation, str):
            raise TypeError(
                "tokenizer_apply_chat_template returned "
                f"{type(conversation).__name__}, expected str; it is called with "
                "tokenize=False, pass e.g. tokenizer.apply_chat_template"
            )
    return conversation + templates.history_header


def segment_texts(templates: PromptTemplates, workers: int) -> dict[str, str]:
    """Texts of the static segments of the combined layout (Spec §7).

    Returns ``{"others_header": ..., "own_header": ..., "sep_0": ..., ...,
    "sep_{workers-1}": ...}``. Every ``sep_j`` (the pivot shown after worker ``j``'s
    unfinished step in the other workers' views) has the same text, but each is its own
    segment, since a view holds each segment once (Spec §2.3).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    texts = {"others_header": templates.others_header, "own_header": templates.own_header}
    for j in range(workers):
        texts[f"sep_{j}"] = templates.separator
    return texts


def load_templates(path: str, base: PromptTemplates | None = None) -> PromptTemplates:
    """Prompt templates from a TOML or JSON file of ``PromptTemplates`` fields (Spec §7.1).

    The file holds a table/object whose keys are fields of :class:`PromptTemplates` (``system``,
    ``problem``, ``step_prefix``, ``finisher``, ...) with string values; the other fields keep the
    values of ``base`` (default: the default templates). Raises ``ValueError`` naming the problem.
    """
    import json
    import tomllib
    from dataclasses import fields, replace
    from pathlib import Path

    file = Path(path).expanduser()
    if file.is_dir():
        raise ValueError(f"prompt file {path!r} is a directory; give a .toml or .json file of template texts")
    if not file.is_file():
        raise ValueError(f"prompt file {path!r} does not exist; give a .toml or .json file of template texts")
    if file.suffix not in (".toml", ".json"):
        raise ValueError(f"prompt file {path!r} must end in .toml or .json")
    try:
        text = file.read_text(encoding="utf-8")
        data = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"prompt file {path!r} is not valid {file.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"prompt file {path!r} must hold a table of template texts, not {type(data).__name__}")
    known = {f.name for f in fields(PromptTemplates)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"prompt file {path!r}: unknown template(s) {', '.join(unknown)}; "
                         f"the templates are {', '.join(sorted(known))}")
    bad = sorted(k for k, v in data.items() if not isinstance(v, str))
    if bad:
        raise ValueError(f"prompt file {path!r}: template(s) {', '.join(bad)} must be strings")
    templates = replace(base or PromptTemplates(), **data)
    if "{problem}" not in templates.problem:
        raise ValueError(f"prompt file {path!r}: the problem template must contain {{problem}}")
    if not templates.finisher.rstrip().endswith("\\boxed{"):
        raise ValueError(f"prompt file {path!r}: the finisher must end with an open \\boxed{{ (Spec §6.6)")
    return templates
