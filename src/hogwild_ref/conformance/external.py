"""Adapters in another process or offline: the line protocol, ``--adapter-cmd``, export and score (Spec §12.7).

An implementation that cannot share a Python process with hogwild_ref (another transformers
version, another language, a server) talks to the runner through files and lines of JSON:

* the runner writes each vector's input tensors to a safetensors file and sends **one JSON request
  line** on the adapter's stdin; the adapter computes the outputs, writes them to a safetensors
  file and answers with **one JSON reply line** on its stdout (:class:`CommandAdapter`,
  ``hogwild-ref conform --adapter-cmd "CMD ..."``);
* or, offline, ``hogwild-ref conform export DIR`` writes every vector's request and input file
  (:func:`export_vectors`), someone computes the outputs (for example by running the same adapter
  as ``CMD < DIR/requests.jsonl``), and ``hogwild-ref conform score DIR`` scores them
  (:func:`OutputsDirAdapter`).

Both paths go through the same runner as in-process adapters, so results, tolerances and the
``--json`` report are identical.
"""

from __future__ import annotations

import json
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .protocol import LEVELS
from .report import VectorMismatch
from .runner import INPUTS, load_checked, vector_paths
from .scope import SkipVector, check_scope, out_of_scope
from .vectors import SPEC_VERSION, Vector

__all__ = [
    "PROTOCOL",
    "AdapterError",
    "AdapterProcessError",
    "CommandAdapter",
    "OutputsDirAdapter",
    "encode_request",
    "export_vectors",
    "read_outputs",
]

#: the line protocol's version: the vector format version it carries (Spec §12.7)
PROTOCOL = SPEC_VERSION


class AdapterProcessError(RuntimeError):
    """The adapter process broke the line protocol, exited, or did not answer in time."""

    remote = True  #: reported without the runner's own file and line (they say nothing of the adapter)


class AdapterError(RuntimeError):
    """The adapter answered a request with ``{"ok": false, "error": ...}``."""

    remote = True  #: reported without the runner's own file and line (they say nothing of the adapter)


# ---------------------------------------------------------------------- encoding
def vector_id(vector: Vector) -> str:
    """``<level>/<name>``: the request id of a vector."""
    return f"{vector.level}/{vector.name}"


def encode_request(vector: Vector, kwargs: Mapping[str, Any], tensors: str, output: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Split an adapter call into a JSON request and the tensors of its input file (Spec §12.7).

    Tensor arguments are stored under their argument name (``x``, ``q``...), mappings of tensors
    under ``<argument>/<key>`` (``keys/common``, ``weights/<parameter>``); every other argument goes
    into the request's ``inputs`` (``None`` as ``null``). bfloat16 tensors are stored as float32
    (exact); the request's ``dtype`` says the vector's dtype.
    """
    inputs: dict[str, Any] = {}
    files: dict[str, Tensor] = {}
    for key, value in kwargs.items():
        if isinstance(value, Tensor):
            files[key] = value
        elif isinstance(value, Mapping) and value and all(isinstance(v, Tensor) for v in value.values()):
            for sub, t in value.items():
                files[f"{key}/{sub}"] = t
        else:
            inputs[key] = value
    files = {k: (t.float() if t.dtype == torch.bfloat16 else t).detach().cpu().contiguous() for k, t in sorted(files.items())}
    request = {
        "op": "run",
        "id": vector_id(vector),
        "level": vector.level,
        "dtype": vector.meta["dtype"],
        "inputs": inputs,
        "tensors": tensors,
        "output": output,
    }
    return request, files


def hello_request(levels: Sequence[str]) -> dict[str, Any]:
    """The first request: the protocol version and the levels the run may ask for."""
    return {"op": "hello", "protocol": PROTOCOL, "levels": list(levels)}


def read_outputs(path: Path | str) -> dict[str, Any]:
    """An output file as the in-process adapter would return it: ``a/b`` names become nested mappings.

    For the ``model`` level the file holds ``logits``; the runner accepts ``{"logits": tensor}``.
    """
    from safetensors.torch import load_file

    flat = load_file(str(path))
    out: dict[str, Any] = {}
    for name, t in flat.items():
        head, sep, rest = name.partition("/")
        if sep:
            out.setdefault(head, {})[rest] = t
        else:
            out[name] = t
    return out


def _save(path: Path, tensors: Mapping[str, Tensor]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(path))


# ---------------------------------------------------------------------- --adapter-cmd
class _NotUtf8:
    """Stands in the reply queue for a stdout line that is not UTF-8."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


STALL_HINT = ("did the adapter flush stdout after writing its reply? (Python: print(..., flush=True); C: fflush(stdout); "
              "or run it unbuffered)")


def check_hello_reply(reply: Mapping[str, Any], where: str) -> tuple[frozenset[str], dict[str, list[str]]]:
    """Validate a hello reply (Spec §12.7): ``ok``, the protocol, the levels and the scope.

    Returns ``(levels, scope)``; raises ValueError with the adapter's message or the fix.
    """
    if reply.get("ok") is False:
        raise ValueError(f"{where} refused the hello request: {reply.get('error') or 'no message'}")
    protocol = reply.get("protocol", PROTOCOL)
    if protocol != PROTOCOL:
        raise ValueError(f"{where} speaks protocol {protocol!r}, this runner protocol {PROTOCOL} (Spec §12.7); update the "
                         f"adapter, or run vectors of its version with the hogwild_ref release that reads them")
    declared = reply.get("levels")
    if not isinstance(declared, list) or not all(level in LEVELS for level in declared):
        raise ValueError(f"{where}'s hello reply must list its levels (a subset of {list(LEVELS)}); got {dict(reply)!r}")
    return frozenset(declared), check_scope(reply.get("scope"), f"{where}'s hello scope")


class CommandAdapter:
    """An adapter that is another process speaking the line protocol on its stdin/stdout (Spec §12.7).

    Args:
        command: the command line (split with :func:`shlex.split`) or an argument list.
        timeout: seconds to wait for each reply (the hello and each vector).
        cwd: working directory of the process (default: the current one).
        levels: the levels of this run (sent in the hello request).

    The process is started on construction and sent the hello request; its reply's ``levels`` are
    :attr:`supported_levels` and its ``scope`` is :attr:`scope`. Its stderr passes through to ours.
    :meth:`close` ends it (also on ``with``). Lines on its stdout that are JSON but no object are
    echoed to stderr and skipped; bytes that are not UTF-8 break the protocol at once.

    After the process stops answering (no reply within the timeout: it is killed), exits, or breaks
    the protocol, :attr:`gone` says why and the runner reports the remaining vectors *not run*
    instead of waiting for each of them.
    """

    def __init__(self, command: str | Sequence[str], timeout: float = 600.0, cwd: str | Path | None = None,
                 levels: Sequence[str] = LEVELS) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ValueError("--adapter-cmd is empty; give the command that starts your adapter")
        self.timeout = timeout
        self.gone: str | None = None
        self._stray: list[str] = []  # stdout lines since the last reply that were not reply objects
        self._tmp = tempfile.TemporaryDirectory(prefix="hogwild-conform-")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd)
        except OSError as exc:
            self._tmp.cleanup()
            raise ValueError(f"cannot start adapter command {self.argv[0]!r}: {exc}") from exc
        self._lines: queue.Queue[str | _NotUtf8 | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        where = f"adapter command {' '.join(self.argv)!r}"
        try:
            reply = self._ask(hello_request(levels), "hello")
            self.supported_levels, self.scope = check_hello_reply(reply, where)
        except AdapterProcessError as exc:
            self.close(kill=True)
            hint = f"; {STALL_HINT}" if "no reply" in str(exc) and not self._stray else ""
            raise ValueError(f"{where} did not answer the hello request: {exc}{hint}") from exc
        except (AdapterError, ValueError) as exc:
            self.close(kill=True)
            raise ValueError(str(exc) if isinstance(exc, ValueError) else f"{where} refused the hello request: {exc}") from None
        except BaseException:
            self.close(kill=True)
            raise

    # ------------------------------------------------------------------ process plumbing
    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._lines.put(_NotUtf8(raw))
                break
            self._lines.put(line)
        self._lines.put(None)

    def _give_up(self, why: str) -> AdapterProcessError:
        """Mark the adapter gone (later vectors are not run), end the process, return the error to raise."""
        self.gone = why
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return AdapterProcessError(why)

    def _ask(self, request: Mapping[str, Any], what: str) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise self._give_up(f"the adapter process has exited (status {self.proc.returncode})")
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self._give_up(f"cannot write to the adapter process: {exc}") from exc
        while True:
            try:
                line = self._lines.get(timeout=self.timeout)
            except queue.Empty:
                stray = (f"; meanwhile it printed {len(self._stray)} line(s) that are not JSON reply objects (last: "
                         f"{self._stray[-1][:60]!r}): a reply is one JSON object on one line (Spec §12.7)") if self._stray else ""
                raise self._give_up(f"no reply to {what} within {self.timeout:g} s; the adapter was stopped{stray}") from None
            if line is None:
                try:
                    status: int | None = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    status = None
                raise self._give_up(f"the adapter process closed its stdout (exit status {status}) during {what}")
            if isinstance(line, _NotUtf8):
                raise self._give_up(f"the adapter wrote bytes that are not UTF-8 on stdout during {what} "
                                    f"({line.raw[:40]!r}); stdout must carry UTF-8 JSON replies only, logs go to stderr")
            text = line.strip()
            try:
                reply = json.loads(text) if text.startswith("{") else None
            except json.JSONDecodeError:
                reply = None
            if not isinstance(reply, dict):
                if text:
                    print(f"[adapter stdout] {text}", file=sys.stderr)
                    self._stray.append(text)
                continue
            self._stray.clear()
            if request.get("id") is not None and reply.get("id") != request["id"]:
                raise self._give_up(f"reply for {reply.get('id')!r} while waiting for {request['id']!r}")
            if request.get("id") is not None and "skip" in reply:
                raise SkipVector(str(reply.get("skip") or "skipped by the adapter"))
            if reply.get("ok") is False and request.get("id") is not None:
                raise AdapterError(str(reply.get("error") or "the adapter reported a failure without a message"))
            return reply

    # ------------------------------------------------------------------ adapter hook
    def call_vector(self, vector: Vector, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Send one vector's request and return the outputs the process wrote."""
        base = Path(self._tmp.name) / vector.level
        tensors, output = base / f"{vector.name}.inputs.safetensors", base / f"{vector.name}.outputs.safetensors"
        request, files = encode_request(vector, kwargs, str(tensors), str(output))
        _save(tensors, files)
        output.unlink(missing_ok=True)
        reply = self._ask(request, vector_id(vector))
        path = Path(reply.get("output") or output)
        if not path.is_file():
            raise AdapterProcessError(f"the adapter replied ok but wrote no output file {path}")
        return read_outputs(path)

    def close(self, kill: bool = False) -> None:
        """End the adapter: close its stdin (its signal to exit) and wait for it, or with ``kill`` (after
        Ctrl-C or a broken protocol) stop it at once; then clean up the temporary files."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if kill and self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=2 if kill else 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._tmp.cleanup()

    def __enter__(self) -> CommandAdapter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(kill=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))


# ---------------------------------------------------------------------- export / score
def export_vectors(out_dir: Path | str, vectors_dir: Path | str | None = None,
                   levels: Sequence[str] | None = None,
                   scope: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Write the vectors' inputs for offline scoring (``hogwild-ref conform export DIR``, Spec §12.7).

    ``DIR/requests.jsonl`` holds the hello request, then one request per vector of ``levels`` inside
    ``scope`` (Spec §12.3; the vectors outside are not exported) exactly as ``--adapter-cmd`` sends
    them, with paths relative to ``DIR``; ``DIR/<level>/<name>.inputs.safetensors`` the input tensors.
    Expected outputs are not exported. An adapter that writes each request's ``output`` file
    (``DIR/<level>/<name>.outputs.safetensors``) can be run as ``cd DIR && CMD < requests.jsonl >
    replies.jsonl``. Returns the requests.
    """
    out = Path(out_dir)
    _, paths = vector_paths(vectors_dir, levels)
    requests: list[dict[str, Any]] = []
    for path in paths:
        vector = load_checked(path)
        if out_of_scope(scope, vector) is not None:
            continue
        rel = f"{vector.level}/{vector.name}"
        request, files = encode_request(vector, INPUTS[vector.level](vector), f"{rel}.inputs.safetensors",
                                        f"{rel}.outputs.safetensors")
        _save(out / f"{rel}.inputs.safetensors", files)
        requests.append(request)
    levels_run = sorted({r["level"] for r in requests}, key=LEVELS.index)
    lines = [hello_request(levels_run), *requests]
    out.mkdir(parents=True, exist_ok=True)
    (out / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return requests


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file. Other lines are ignored, as the live runner does, with one
    warning that counts them (so a damaged file is not taken for an adapter that replied nothing)."""
    out, ignored = [], []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            item = None
        if isinstance(item, dict):
            out.append(item)
        elif line.strip():
            ignored.append(line.strip())
    if ignored:
        warnings.warn(f"{path}: {len(ignored)} line(s) are not JSON objects and were ignored (first: {ignored[0][:60]!r})",
                      stacklevel=2)
    return out


class OutputsDirAdapter:
    """Scores outputs computed offline (``hogwild-ref conform score DIR``, Spec §12.7), like a live run.

    Reads ``DIR/<level>/<name>.outputs.safetensors``. When ``DIR/replies.jsonl`` exists, its hello
    reply (the line without an ``id``) gives the levels and the scope, as live; a vector whose reply
    says ``"ok": false`` fails with its message, one whose reply says ``"skip"`` is skipped. Without a
    hello reply, a level with no output file at all is out of scope. A vector with no request in
    ``DIR/requests.jsonl`` (not exported: ``--level``, ``--scope``) is out of scope; a vector whose
    output file is missing fails.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"output directory {self.directory} does not exist (run `hogwild-ref conform export DIR` first)")
        self.replies: dict[str, dict[str, Any]] = {}
        hello: dict[str, Any] | None = None
        replies = self.directory / "replies.jsonl"
        if replies.is_file():
            for reply in _json_lines(replies):
                if isinstance(reply.get("id"), str):
                    self.replies[reply["id"]] = reply
                elif hello is None and ("levels" in reply or "ok" in reply):
                    hello = reply
        requests = self.directory / "requests.jsonl"
        self.exported: set[str] | None = None
        if requests.is_file():
            self.exported = {r["id"] for r in _json_lines(requests) if r.get("op") == "run" and isinstance(r.get("id"), str)}
        self.scope: dict[str, list[str]] = {}
        if hello is not None:
            self.supported_levels, self.scope = check_hello_reply(hello, f"the adapter (hello reply in {replies})")
        else:
            self.supported_levels = frozenset(
                level for level in LEVELS if any((self.directory / level).glob("*.outputs.safetensors"))
                or any(k.startswith(level + "/") for k in self.replies)
            )
            if not self.supported_levels:  # an export the adapter has not run yet: nothing to score, said so
                said = "no usable replies.jsonl" if replies.is_file() else "no replies.jsonl"
                raise FileNotFoundError(f"{self.directory} holds {said} and no output files: run the adapter on "
                                        f"the export first (cd {self.directory} && CMD < requests.jsonl > replies.jsonl)")

    def out_of_scope_reason(self, vector: Vector) -> str | None:
        """Why a vector is out of scope offline: it was not exported."""
        if self.exported is not None and vector_id(vector) not in self.exported:
            return "not exported (conform export --level/--scope)"
        return None

    def call_vector(self, vector: Vector, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        reply = self.replies.get(vector_id(vector))
        if reply is not None and "skip" in reply:
            raise SkipVector(str(reply.get("skip") or "skipped by the adapter"))
        if reply is not None and reply.get("ok") is False:
            raise AdapterError(str(reply.get("error") or "the adapter reported a failure without a message"))
        path = self.directory / vector.level / f"{vector.name}.outputs.safetensors"
        if not path.is_file():
            raise VectorMismatch(f"no output file {path.relative_to(self.directory)} for this vector")
        return read_outputs(path)
