"""Live terminal view of a Hogwild run (rich): one column per worker, the shared history, progress."""

from __future__ import annotations

from typing import Any

from rich.columns import Columns
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .events import DoneEvent, Event, FlushEvent, HogwildResult, StepEvent, TokenEvent
from .prompts import default_names

TAIL = 600  # characters of each worker's current step shown live


class LiveView:
    """Renders engine events; works without a TTY (rich then prints the final frame only)."""

    def __init__(self, console: Console, workers: int, budget: int, problem: str):
        self.console = console
        self.names = default_names(workers)
        self.current = [""] * workers
        self.history: list[str] = []
        self.problem = problem
        self.progress = Progress(
            TextColumn("ticks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        self.task = self.progress.add_task("ticks", total=budget)
        self.live = Live(self._render(), console=console, refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)
        if not self.live.console.is_terminal:  # into a file or a pipe the last frame ends without a newline
            self.live.console.line()

    def on_event(self, event: Event) -> None:
        if isinstance(event, TokenEvent):
            if not event.eos:  # as the worker's text: its end-of-sequence token is no part of it
                self.current[event.worker] += event.text
            # the finisher may run past the budget: grow the bar instead of overflowing it
            total = max(self.progress.tasks[0].total or 0, event.tick)
            self.progress.update(self.task, completed=event.tick, total=total)
        elif isinstance(event, StepEvent):
            self.history.append(event.text.strip())
            self.current[event.worker] = f"(step {event.index} finished)\n"
        elif isinstance(event, FlushEvent):
            pass
        elif isinstance(event, DoneEvent):
            self.progress.update(self.task, completed=event.tick)
        self.live.update(self._render())

    def _render(self) -> Group:
        cols = [
            Panel(Text(c[-TAIL:] or "…"), title=Text(name), width=max(30, self.console.width // max(1, len(self.names)) - 1))
            for name, c in zip(self.names, self.current)
        ]
        hist = Text("\n".join(self.history[-8:]) or "(no finished steps yet)")
        return Group(
            Panel(Text(self.problem), title="problem"),
            Panel(hist, title=f"shared history ({len(self.history)} steps, latest shown)"),
            Columns(cols),
            self.progress,
        )

    def summary(self, result: HogwildResult) -> None:
        table = Table(title="Hogwild run", show_header=False)
        tokens = sum(len(w.tokens) for w in result.workers)
        gen_seconds = max(result.seconds - result.prefill_seconds, 1e-9)
        rows = [
            ("model", result.model),
            ("layout / backend", f"{result.layout} / {result.backend}"),
            ("workers", str(len(result.workers))),
            ("ticks", str(result.ticks)),
            ("time", f"{result.seconds:.2f} s (prefill {result.prefill_seconds:.2f} s)"),
            ("speed", f"{result.ticks / gen_seconds:.1f} ticks/s, {tokens / gen_seconds:.1f} tokens/s"),
            ("stopped by", str(result.reason)),
            ("answer", result.answer if result.answer is not None else "(none)"),
        ]
        # --snapshots: the answer in the history at each requested tick (Spec §6.5)
        rows += [(f"snapshot, tick {snap.tick}", snap.answer if snap.answer is not None else "(none)")
                 for snap in result.snapshots]
        for name, value in rows:  # as plain text: an answer such as [x, y] or [/] is not rich markup
            table.add_row(name, Text(value))
        self.console.print(table)
