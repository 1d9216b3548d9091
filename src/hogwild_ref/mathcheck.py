"""math-verify's checks in a child process, so that each one is bounded in time (Spec §13.1).

A check can outlast any bound set from inside its own process. math-verify's time limits use
``SIGALRM``, which works in a main thread only; and a check can spend minutes in one C call that
holds the interpreter (sympy evaluating ``9^{9^{9^{9}}}`` as an exact integer), during which no
other thread of the process runs, so a watching thread cannot even give up on it. So the checks run
in a child process (:func:`main`, ``python -m hogwild_ref.mathcheck``) that answers JSON lines, and
:class:`Checker`, in the caller's process, waits at most the bound for each answer and kills the
child when the bound passes (the next check starts a new one). The child also bounds its own CPU
time for each check (``RLIMIT_CPU``), so a child whose parent was killed ends too.

The protocol, one JSON object a line: the child writes ``{"ready": true}`` once math-verify is
imported; then for each ``{"gold": G, "pred": P, "limit": S}`` it reads it writes ``{"ok": BOOL}``
(``math_verify.verify(parse(G), parse(P))``, each wrapped in ``\\boxed{}``, its own time limits off;
false when either does not parse) or ``{"error": "ExceptionName"}``. The end of its input ends it.

No torch (floor 1).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

__all__ = ["Checker", "main", "serve", "verify"]

#: Seconds the child may take to start (Python, sympy and math-verify imported), not counted in a
#: check's bound.
START_TIMEOUT = 300.0


@lru_cache(maxsize=1)
def _math_verify() -> Any:
    import logging

    import math_verify

    # its notice that our own time bound must replace the (disabled) SIGALRM one: the parent's bound does
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


@lru_cache(maxsize=8192)
def _parse(text: str) -> tuple[Any, ...]:
    return tuple(_math_verify().parse("\\boxed{" + text + "}", parsing_timeout=None))


def verify(gold: str, pred: str) -> bool:
    """math-verify's verdict on ``pred`` for ``gold`` (Spec §13.1), in this process, unbounded."""
    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(_math_verify().verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))


def _limit_cpu(seconds: float) -> None:
    """Let this process use at most ``seconds`` more CPU seconds (then ``SIGXCPU`` ends it)."""
    try:
        import resource
    except ImportError:  # not a POSIX system: the parent's kill is the only bound
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    want = int(usage.ru_utime + usage.ru_stime + seconds) + 2
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (want, hard))


def serve(inp: IO[str], out: IO[str]) -> None:
    """Answer each request line of ``inp`` on ``out`` (the protocol in the module doc)."""
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in inp:
        if not line.strip():
            continue
        request = json.loads(line)
        _limit_cpu(float(request.get("limit", 60.0)))
        try:
            reply: dict[str, Any] = {"ok": verify(request["gold"], request["pred"])}
        except Exception as exc:  # noqa: BLE001 - reported to the parent as this check's verdict
            reply = {"error": type(exc).__name__}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main() -> None:
    """The child process: math-verify imported, then :func:`serve` on stdin/stdout."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the terminal's whole group; the parent decides
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # SIGXCPU: no core file
    except ImportError:
        pass
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout = sys.stderr  # anything a library prints stays out of the protocol
    _math_verify()
    serve(sys.stdin, protocol)


class Checker:
    """The caller's side: one child process, started on the first check and after a kill.

    :meth:`check` returns ``True``/``False`` (math-verify's verdict), ``"timeout"`` when the child did
    not answer within the bound (it is killed), or ``"checker error: ..."`` when it raised, ended or
    could not start. Thread-safe (one check at a time). The child's output is read unbuffered, line
    by line, so that waiting on its pipe never misses a line already read; any exception between a
    request and its reply (Ctrl-C) stops the child, so a late reply never answers a later request."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self.close()
        env = dict(os.environ)
        # the package as this process imported it, also when it is not installed (a checkout on sys.path)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # -P: the working directory is not put on sys.path (a file there named like a module would shadow it)
        self._proc = proc = subprocess.Popen([sys.executable, "-P", "-m", "hogwild_ref.mathcheck"],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:  # (what a site hook prints at start-up comes before the ready line: skipped)
                reply = self._read(max(deadline - time.monotonic(), 0.0))
                if isinstance(reply, dict) and reply.get("ready"):
                    return proc
                if reply == "timeout" or isinstance(reply, str) and "ended" in reply:
                    raise RuntimeError(f"the answer checker's process did not start ({reply}; python -m "
                                       "hogwild_ref.mathcheck); check that math-verify imports: python -c 'import math_verify'")
        except BaseException:
            self.close()
            raise

    def _read(self, timeout: float) -> dict[str, Any] | str:
        """The child's next line as an object, or why there is none (``"timeout"``, ``"checker error: ..."``)."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if not select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))[0]:
                return "timeout"
            chunk = os.read(fd, 65536)
            if not chunk:
                return f"checker error: its process ended (exit code {self._proc.wait()})"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:  # not the protocol: a site hook's print at start-up, or a line cut short
            return "checker error: a reply that is not JSON"
        return reply if isinstance(reply, dict) else "checker error: a reply that is not an object"

    def check(self, gold: str, pred: str, timeout: float) -> bool | str:
        """math-verify's verdict on ``pred`` for ``gold``, bounded by ``timeout`` seconds."""
        with self._lock:
            try:
                proc = self._start()
            except (RuntimeError, OSError) as exc:
                return f"checker error: {str(exc).split(';')[0]}"
            assert proc.stdin is not None
            try:
                proc.stdin.write((json.dumps({"gold": gold, "pred": pred, "limit": timeout}) + "\n").encode("utf-8"))
                reply = self._read(timeout)
            except OSError:  # it ended between checks
                self.close()
                return "checker error: its process ended"
            except BaseException:  # Ctrl-C between the request and its reply: that reply must never answer
                self.close()       # the next check, so this child goes (the next check starts another)
                raise
            if isinstance(reply, str):
                self.close()
                return reply
            if "error" in reply:
                return f"checker error: {reply['error']}"
            return bool(reply.get("ok"))

    def close(self) -> None:
        """Stop the child (a later check starts a new one)."""
        proc, self._proc, self._buf = self._proc, None, b""
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


if __name__ == "__main__":
    main()
