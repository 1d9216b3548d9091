"""Benchmarks: end-to-end ticks/s and one layer's decode attention per backend.

Speed targets live here, never as timed asserts in tests. Every number is reported with the
machine it ran on (:func:`machine`), and each Hogwild number next to a baseline measured in the
same process: plain transformers greedy decoding (end to end) and PyTorch's one-sequence
``scaled_dot_product_attention`` (attention).
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .attention import BACKENDS
from .masks import plan_tick
from .rope import RopeSpec
from .segments import make_layout

__all__ = ["AttentionTiming", "EngineTiming", "bench_attention", "bench_engine", "machine"]


def machine() -> str:
    """One line naming the hardware and software the numbers came from."""
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name()
    else:
        dev = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    import transformers

    return f"{dev}; torch {torch.__version__}; transformers {transformers.__version__}"


def _timeit(fn: Callable[[], Any], repeat: int, warmup: int = 2) -> float:
    """Median seconds of ``fn`` over ``repeat`` runs (synchronising CUDA)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---------------------------------------------------------------------- end to end
@dataclass
class EngineTiming:
    workers: int
    layout: str
    backend: str
    ticks: int
    ticks_per_s: float
    tokens_per_s: float
    plain_tokens_per_s: float  # transformers greedy decoding, batch 1, same model


def _plain_decode_rate(model: Any, tokenizer: Any, tokens: int) -> float:
    ids = tokenizer("Solve: 17 + 25 = ?", return_tensors="pt").input_ids.to(model.device)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return tokens / (time.perf_counter() - t)


def bench_engine(model: Any, tokenizer: Any, workers: Sequence[int] = (1, 2, 4), ticks: int = 32,
                 layout: str = "combined", backend: str = "rotate_queries") -> list[EngineTiming]:
    """Ticks/s of the engine for each W (prefill excluded), next to plain decoding tokens/s."""
    from .engine import Engine
    from .scheduler import SchedulerConfig

    plain = _plain_decode_rate(model, tokenizer, ticks)
    out = []
    for w in workers:
        engine = Engine(model, tokenizer, workers=w, layout=layout, backend=backend, finisher=False,
                        scheduler=SchedulerConfig(max_ticks=ticks, eos_token_ids=frozenset()))
        r = engine.run("A train travels 60 km in 45 minutes. What is its average speed in km/h?")
        gen = max(r.seconds - r.prefill_seconds, 1e-9)
        tokens = sum(len(x.tokens) for x in r.workers)
        out.append(EngineTiming(w, layout, backend, r.ticks, r.ticks / gen, tokens / gen, plain))
    return out


# ---------------------------------------------------------------------- attention
@dataclass
class AttentionTiming:
    backend: str
    workers: int
    context: int
    microseconds: float
    baseline_microseconds: float  # SDPA, one sequence of the same context, q_len 1

    @property
    def ratio(self) -> float:
        return self.microseconds / self.baseline_microseconds


def bench_attention(contexts: Sequence[int] = (1024, 4096), workers: int = 4, q_heads: int = 28, kv_heads: int = 4,
                    head_dim: int = 128, dtype: torch.dtype | None = None, device: str | None = None,
                    backends: Sequence[str] = ("rotate_queries", "rotate_keys"), repeat: int = 10) -> list[AttentionTiming]:
    """One decode tick's attention (one layer) in the combined layout: W workers, a long common
    history of ``context`` tokens and short current steps, vs single-sequence SDPA at that context."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    rope = RopeSpec(1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)), head_dim=head_dim)
    out = []
    for ctx in contexts:
        table = make_layout("combined", workers, ctx, others_header=12, separator=4, own_header=12)
        table = table.with_lengths({f"cur_{w}": 40 + 7 * w for w in range(workers)})
        plan = plan_tick(table, [1] * workers, rope, device)
        gen = torch.Generator(device="cpu").manual_seed(0)
        keys = [torch.randn(kv_heads, max(L, 1), head_dim, generator=gen).to(device, dtype) for L in plan.lengths.tolist()]
        values = [torch.randn_like(k) for k in keys]
        q = torch.randn(workers, q_heads, 1, head_dim, generator=gen).to(device, dtype)
        qb = q[:1]
        kb = torch.randn(1, kv_heads, ctx, head_dim, generator=gen).to(device, dtype)
        vb = torch.randn_like(kb)
        base = _timeit(lambda: F.scaled_dot_product_attention(qb, kb, vb, enable_gqa=True), repeat)
        for name in backends:
            fn = BACKENDS[name]
            t = _timeit(lambda: fn(q, keys, values, plan, rope, head_dim ** -0.5), repeat)
            out.append(AttentionTiming(name, workers, ctx, t * 1e6, base * 1e6))
    return out


def as_rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [asdict(x) | ({"ratio": x.ratio} if isinstance(x, AttentionTiming) else {}) for x in items]
