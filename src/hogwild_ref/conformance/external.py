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
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .protocol import LEVELS
from .runner import INPUTS, load_checked, vector_paths
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


class AdapterError(RuntimeError):
    """The adapter answered a request with ``{"ok": false, "error": ...}``."""


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
class CommandAdapter:
    """An adapter that is another process speaking the line protocol on its stdin/stdout (Spec §12.7).

    Args:
        command: the command line (split with :func:`shlex.split`) or an argument list.
        timeout: seconds to wait for each reply (the hello and each vector).
        cwd: working directory of the process (default: the current one).

    The process is started on construction and sent the hello request; its reply's ``levels`` are
    :attr:`supported_levels`. Its stderr passes through to ours. :meth:`close` ends it (also on
    ``with``). Lines on its stdout that are not JSON objects are echoed to stderr and skipped.
    """

    def __init__(self, command: str | Sequence[str], timeout: float = 600.0, cwd: str | Path | None = None,
                 levels: Sequence[str] = LEVELS) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ValueError("--adapter-cmd is empty; give the command that starts your adapter")
        self.timeout = timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="hogwild-conform-")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         bufsize=1, cwd=cwd)
        except OSError as exc:
            self._tmp.cleanup()
            raise ValueError(f"cannot start adapter command {self.argv[0]!r}: {exc}") from exc
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            reply = self._ask(hello_request(levels), "hello")
        except AdapterProcessError as exc:
            self.close()
            raise ValueError(f"adapter command {' '.join(self.argv)!r} did not answer the hello request: {exc}") from exc
        declared = reply.get("levels")
        if not isinstance(declared, list) or not all(level in LEVELS for level in declared):
            self.close()
            raise ValueError(f"the adapter's hello reply must list its levels (a subset of {list(LEVELS)}); got {reply!r}")
        self.supported_levels = frozenset(declared)

    # ------------------------------------------------------------------ process plumbing
    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _ask(self, request: Mapping[str, Any], what: str) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise AdapterProcessError(f"the adapter process has exited (status {self.proc.returncode})")
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise AdapterProcessError(f"cannot write to the adapter process: {exc}") from exc
        while True:
            try:
                line = self._lines.get(timeout=self.timeout)
            except queue.Empty:
                raise AdapterProcessError(f"no reply to {what} within {self.timeout:g} s") from None
            if line is None:
                status = self.proc.wait(timeout=5)
                raise AdapterProcessError(f"the adapter process closed its stdout (exit status {status}) during {what}")
            text = line.strip()
            try:
                reply = json.loads(text) if text.startswith("{") else None
            except json.JSONDecodeError:
                reply = None
            if not isinstance(reply, dict):
                if text:
                    print(f"[adapter stdout] {text}", file=sys.stderr)
                continue
            if reply.get("ok") is False:
                raise AdapterError(str(reply.get("error") or "the adapter reported a failure without a message"))
            if request.get("id") is not None and reply.get("id") != request["id"]:
                raise AdapterProcessError(f"reply for {reply.get('id')!r} while waiting for {request['id']!r}")
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

    def close(self) -> None:
        """Close the adapter's stdin (its signal to exit), wait for it, clean up the temporary files."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._tmp.cleanup()

    def __enter__(self) -> CommandAdapter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------- export / score
def export_vectors(out_dir: Path | str, vectors_dir: Path | str | None = None,
                   levels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Write every vector's inputs for offline scoring (``hogwild-ref conform export DIR``, Spec §12.7).

    ``DIR/requests.jsonl`` holds the hello request, then one request per vector exactly as
    ``--adapter-cmd`` sends them, with paths relative to ``DIR``; ``DIR/<level>/<name>.inputs.safetensors``
    the input tensors. Expected outputs are not exported. An adapter that writes each request's
    ``output`` file (``DIR/<level>/<name>.outputs.safetensors``) can be run as
    ``cd DIR && CMD < requests.jsonl > replies.jsonl``. Returns the requests.
    """
    out = Path(out_dir)
    _, paths = vector_paths(vectors_dir, levels)
    requests: list[dict[str, Any]] = []
    for path in paths:
        vector = load_checked(path)
        rel = f"{vector.level}/{vector.name}"
        request, files = encode_request(vector, INPUTS[vector.level](vector), f"{rel}.inputs.safetensors",
                                        f"{rel}.outputs.safetensors")
        _save(out / f"{rel}.inputs.safetensors", files)
        requests.append(request)
    levels_run = sorted({r["level"] for r in requests}, key=LEVELS.index)
    lines = [hello_request(levels_run), *requests]
    (out / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return requests


class OutputsDirAdapter:
    """Scores outputs computed offline (``hogwild-ref conform score DIR``, Spec §12.7).

    Reads ``DIR/<level>/<name>.outputs.safetensors``. A level with no output file at all is
    skipped; a vector whose output file is missing while others of its level exist fails. When
    ``DIR/replies.jsonl`` exists, a vector whose reply says ``"ok": false`` fails with its message.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"output directory {self.directory} does not exist (run `hogwild-ref conform export DIR` first)")
        self.replies: dict[str, dict[str, Any]] = {}
        replies = self.directory / "replies.jsonl"
        if replies.is_file():
            for line in replies.read_text(encoding="utf-8").splitlines():
                try:
                    reply = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(reply, dict) and isinstance(reply.get("id"), str):
                    self.replies[reply["id"]] = reply
        self.supported_levels = frozenset(
            level for level in LEVELS if any((self.directory / level).glob("*.outputs.safetensors"))
            or any(k.startswith(level + "/") for k in self.replies)
        )

    def call_vector(self, vector: Vector, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        reply = self.replies.get(vector_id(vector))
        if reply is not None and reply.get("ok") is False:
            raise AdapterError(str(reply.get("error") or "the adapter reported a failure without a message"))
        path = self.directory / vector.level / f"{vector.name}.outputs.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no output file {path.relative_to(self.directory)} for this vector")
        return read_outputs(path)
