#!/usr/bin/env python3
"""A standalone Hogwild implementation of the ``rope`` and ``attention`` conformance levels, in NumPy.

It talks to ``hogwild-ref conform`` through the out-of-process line protocol (Spec §12.7) and uses
nothing from hogwild_ref, torch or transformers: only ``numpy`` and ``safetensors`` (its NumPy API).
It is an example of a third-party adapter and is checked by hogwild_ref's test suite.

Run it through the runner::

    hogwild-ref conform --adapter-cmd ".venv/bin/python examples/numpy_adapter.py"

or offline::

    hogwild-ref conform export /tmp/hw
    (cd /tmp/hw && /path/to/.venv/bin/python /path/to/examples/numpy_adapter.py < requests.jsonl > replies.jsonl)
    hogwild-ref conform score /tmp/hw

Either way the ``model`` vectors are reported out of scope and the exit status is 0. (``.venv/bin/python``:
the project's environment has numpy and safetensors; a system Python may lack them.)

Protocol, in short: every stdin line is a JSON request. ``{"op": "hello", ...}`` is answered with the
levels implemented; ``{"op": "run", "id", "level", "inputs", "tensors", "output"}`` names a
safetensors file of input tensors (``x``, ``positions``, ``q``, ``keys/<segment>``...) and the file to
write the outputs to (``rotated``, ``out``, ``keys/<segment>``...); the answer is one line
``{"id": ..., "ok": true, "output": ...}``, ``{"id": ..., "ok": false, "error": "..."}`` or, for a
request it does not cover, ``{"id": ..., "skip": "<reason>"}``. The hello reply declares the levels
and the scope (Spec §12.3). Relative paths are relative to the current directory. Logs go to stderr:
stdout carries replies only, flushed after every line.
"""

from __future__ import annotations

import json
import sys
import traceback

import numpy as np
from safetensors.numpy import load_file, save_file

LEVELS = ["rope", "attention"]
#: protocol versions this adapter speaks (Spec §12.7); the rope and attention requests are the same in both
PROTOCOLS = (2, 3)
#: what it covers within its levels (Spec §12.3): vectors outside are reported out of scope, not failed
SCOPE = {
    "dtypes": ["float32", "bfloat16"],  # bfloat16 inputs arrive as exact float32 values
    "conventions": ["half", "interleaved"],
    "layouts": ["contiguous", "interleaved", "combined", "explicit"],
}


# ---------------------------------------------------------------------- RoPE (Spec §8)
class Rope:
    """RoPE from a vector's version-independent data: angles and rotation in float64."""

    def __init__(self, data: dict) -> None:
        self.inv_freq = np.asarray(data["inv_freq"], dtype=np.float64)
        self.scaling = float(data["attention_scaling"])
        self.rotary_dim = int(data["rotary_dim"])
        self.convention = data["convention"]
        assert self.rotary_dim == 2 * self.inv_freq.size

    def rerotate(self, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Pure rotation of ``x[..., D]`` by ``delta`` (broadcast against ``x.shape[:-1]``), no scaling."""
        x = np.asarray(x, dtype=np.float64)
        angle = np.asarray(delta, dtype=np.float64)[..., None] * self.inv_freq  # (..., h)
        cos, sin = np.cos(angle), np.sin(angle)
        h, out = self.inv_freq.size, x.copy()
        if self.convention == "half":
            x1, x2 = x[..., :h], x[..., h : 2 * h]
            out[..., :h], out[..., h : 2 * h] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        else:  # interleaved pairs (2i, 2i + 1)
            x1, x2 = x[..., 0 : 2 * h : 2], x[..., 1 : 2 * h : 2]
            out[..., 0 : 2 * h : 2], out[..., 1 : 2 * h : 2] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        return out

    def rotate(self, x: np.ndarray, position: np.ndarray) -> np.ndarray:
        """The model's RoPE at absolute positions: the rotation times ``attention_scaling`` (rotated channels only)."""
        out = self.rerotate(x, position)
        out[..., : self.rotary_dim] *= self.scaling
        return out


def level_rope(inputs: dict, t: dict) -> dict:
    rope = Rope(inputs["rope"])
    return {"rotated": rope.rotate(t["x"], t["positions"]), "rerotated": rope.rerotate(t["y"], t["deltas"])}


# ---------------------------------------------------------------------- segment tables (Spec §2, §4)
def preset_views(layout: str, workers: int) -> list[list[str]]:
    """The views of a layout preset (Spec §4.1-§4.3); each ends with the worker's write segment."""
    views = []
    for w in range(workers):
        others = [j for j in range(workers) if j != w]
        if layout == "contiguous":
            views.append(["prompt", *(f"out_{j}" for j in others), f"out_{w}"])
        elif layout == "interleaved":
            views.append(["common", f"cur_{w}"])
        elif layout == "combined":
            middle = [sid for j in others for sid in (f"cur_{j}", f"sep_{j}")]
            views.append(["common", "others_header", *middle, "own_header", f"cur_{w}"])
        else:
            raise ValueError(f"unknown layout {layout!r}")
    return views


def level_attention(inputs: dict, t: dict) -> dict:
    """One tick of one attention layer (Spec §3): place, rotate, write all rows, then attend."""
    rope = Rope(inputs["rope"])
    W, counts, scaling = int(inputs["workers"]), list(inputs["new_tokens"]), float(inputs["scaling"])
    views = inputs["table"]["views"] if inputs["table"] is not None else preset_views(inputs["layout"], W)
    q, k, v = (np.asarray(t[name], dtype=np.float64) for name in ("q", "k", "v"))  # (W, H, n, D), pre-RoPE
    keys = {sid: np.asarray(t[f"keys/{sid}"], dtype=np.float64) for sid in inputs["lengths"]}  # stored form
    values = {sid: np.asarray(t[f"values/{sid}"], dtype=np.float64) for sid in inputs["lengths"]}
    before = {sid: int(n) for sid, n in inputs["lengths"].items()}

    # write before read (Spec §3.2): every row's real slots are appended to its write segment, stored at
    # local positions (Spec §2.1: rotate(k, t)); zero-token rows and padding slots write nothing (§3.4)
    for w in range(W):
        sid, n = views[w][-1], counts[w]
        local = np.arange(before[sid], before[sid] + n)
        keys[sid] = np.concatenate([keys[sid], rope.rotate(k[w, :, :n], local)], axis=1)
        values[sid] = np.concatenate([values[sid], v[w, :, :n]], axis=1)
    after = {sid: keys[sid].shape[1] for sid in keys}

    Hq, n_slots, D = q.shape[1], q.shape[2], q.shape[3]
    group = Hq // k.shape[1]
    out = np.zeros((W, Hq, n_slots, D))
    for w in range(W):
        n = counts[w]
        if n == 0:
            continue
        view, own = views[w], views[w][-1]
        offsets = np.cumsum([0] + [after[s] for s in view])[:-1]  # o_w(s) with post-write lengths
        # every key at its view position: rerotate the stored key by its segment's offset
        k_view = np.concatenate([rope.rerotate(keys[s], offsets[i]) for i, s in enumerate(view)], axis=1)
        v_view = np.concatenate([values[s] for s in view], axis=1)
        own_start = int(offsets[-1])
        q_pos = own_start + before[own] + np.arange(n)  # the new tokens' view positions (Spec §3.5)
        q_rot = rope.rotate(q[w, :, :n], q_pos)  # (Hq, n, D)
        key_pos = np.arange(k_view.shape[1])
        visible = key_pos[None, :] <= q_pos[:, None]  # causal inside the own segment, everything before it
        for h in range(Hq):
            scores = scaling * q_rot[h] @ k_view[h // group].T  # (n, keys)
            scores = np.where(visible, scores, -np.inf)
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[w, h, :n] = p @ v_view[h // group]
    writes = {views[w][-1] for w in range(W)}
    result = {"out": out}
    for sid in writes:
        result[f"keys/{sid}"] = keys[sid]
        result[f"values/{sid}"] = values[sid]
    return result


# ---------------------------------------------------------------------- the line protocol (Spec §12.7)
HANDLERS = {"rope": level_rope, "attention": level_attention}


def answer(request: dict) -> dict:
    if request.get("op") == "hello":
        protocol = request.get("protocol")
        if protocol not in PROTOCOLS:  # an unknown version: refuse, naming the ones spoken (Spec §12.7)
            return {"ok": False, "error": f"protocol {protocol!r} not supported; this adapter speaks {list(PROTOCOLS)}"}
        return {"ok": True, "protocol": protocol, "levels": LEVELS, "scope": SCOPE, "name": "numpy example adapter"}
    rid = request.get("id")
    if request.get("level") not in HANDLERS:  # e.g. an export of every level: not a failure, a skip
        return {"id": rid, "skip": f"the numpy example adapter does not implement the {request.get('level')} level"}
    try:
        handler = HANDLERS[request["level"]]
        outputs = handler(request["inputs"], load_file(request["tensors"]))
        flat = {}
        for name, value in outputs.items():
            flat[name] = np.ascontiguousarray(value, dtype=np.float32)
        save_file(flat, request["output"])
        return {"id": rid, "ok": True, "output": request["output"]}
    except Exception as exc:  # report the failure of this vector and go on with the next
        traceback.print_exc(file=sys.stderr)
        return {"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        print(json.dumps(answer(json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
