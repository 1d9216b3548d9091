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
from .plan import plan_tick
from .rope import RopeSpec
from .segments import make_layout

__all__ = ["AttentionTiming", "EngineTiming", "MODEL_SHAPES", "TickTiming", "attention_bytes", "bench_attention", "bench_engine",
           "bench_ticks", "machine", "random_model", "read_bandwidth", "weight_bytes"]


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
                 layout: str = "combined", backend: str = "rotate_queries",
                 on_result: Callable[[EngineTiming], None] | None = None) -> list[EngineTiming]:
    """Ticks/s of the engine for each W (prefill excluded), next to plain decoding tokens/s; ``on_result``
    gets each W's timing as it is measured (kept when a later one is interrupted)."""
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
        if on_result is not None:
            on_result(out[-1])
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


def _attention_tokens(context: int, workers: int) -> int:
    """Tokens :func:`bench_attention`'s table stores: the common history, the headers (12 + 12), and per
    worker ``w`` a current step of ``40 + 7 w`` tokens and a separator of 4."""
    return context + 24 + sum(44 + 7 * w for w in range(workers))


def attention_bytes(context: int, workers: int, q_heads: int = 28, kv_heads: int = 4, head_dim: int = 128,
                    dtype_bytes: int = 4) -> int:
    """An upper estimate of the memory one :func:`bench_attention` case (the backends of Spec §9) adds to the process: the stored
    K/V, the baseline's K/V, one worker's view rotated and concatenated (``rotate_keys``) with its
    temporaries (two more K/V sizes), eight float32 arrays of every row's scores (``rotate_queries``
    scores each row against every segment), and 96 MiB of smaller buffers. Measured on the CPU (growth
    of the peak resident set over both backends, float32, 1 thread; estimate in brackets), in MiB:
    4,096 tokens and 4 workers 108-111 (195); 16,384 and 4 339-409 (477); 16,384 and 16 451 (686);
    2,048 and 64 772-894 (1,440); 4,096 and 32 329-351 (499); 32,768 and 32 853-893 (1,843); 65,536
    and 1 963-970 (1,433); 65,536 and 4 1,314 (1,605); 131,072 and 2 2,451 (2,882); 196,608 and 32
    about 4,500 (9,523)."""
    T = _attention_tokens(context, workers)
    kv = 2 * kv_heads * head_dim * dtype_bytes
    return kv * (4 * T + context) + 32 * workers * q_heads * T + (96 << 20)


def bench_attention(contexts: Sequence[int] = (1024, 4096), workers: int = 4, q_heads: int = 28, kv_heads: int = 4,
                    head_dim: int = 128, dtype: torch.dtype | None = None, device: str | None = None,
                    backends: Sequence[str] = ("rotate_queries", "rotate_keys"), repeat: int = 10,
                    on_result: Callable[[AttentionTiming], None] | None = None) -> list[AttentionTiming]:
    """One decode tick's attention (one layer) in the combined layout: W workers, a long common
    history of ``context`` tokens and short current steps, vs single-sequence SDPA at that context;
    ``on_result`` gets each timing as it is measured. :func:`attention_bytes` is a case's memory."""
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
            if on_result is not None:
                on_result(out[-1])
    return out


def as_rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [asdict(x) | ({"ratio": x.ratio} if isinstance(x, AttentionTiming) else {}) for x in items]


# ---------------------------------------------------------------------- ticks (the fast path's benchmark)
#: random-weight model shapes for ``bench ticks --model`` (no download)
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(family="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0,
                         tie_word_embeddings=True),
    "qwen2.5-7b": dict(family="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0),
    "qwq-32b": dict(family="qwen2", hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                    num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, rope_theta=1000000.0),
}

#: tokens in every worker's current step when the ticks are timed (the issue's method)
STEP_TOKENS = 64


@dataclass
class TickTiming:
    """One ``bench ticks`` case: seconds per Hogwild tick vs HF's own single-sequence decode step."""

    backend: str
    layout: str
    workers: int
    ctx: int
    s_per_tick: float
    baseline_s_per_step: float
    ratio: float
    compiled_baseline_s_per_step: float | None
    ratio_compiled: float | None
    peak_mem_bytes: int  # the case's peak: CUDA allocated bytes; CPU the process's resident set (Linux: reset per case)
    device: str
    threads: int
    # K/V bytes a tick reads: the fast path's common windows once + tail blocks; other backends every stored
    # token once (the least they can read)
    kv_bytes_per_tick: int = 0
    weight_bytes: int = 0  # bytes of the model's parameters (each tensor counted once: tied embeddings once)
    bandwidth: float = 0.0  # bytes/s one read of a large tensor achieves, same process and threads
    floor_s: float = 0.0  # (weight_bytes + kv_bytes_per_tick) / bandwidth: the memory-bandwidth floor of a tick
    ratio_floor: float = 0.0  # s_per_tick / floor_s
    baseline_floor_s: float = 0.0  # the HF step's floor: weights + its K/V at the same context, / bandwidth
    baseline_ratio_floor: float = 0.0  # baseline_s_per_step / baseline_floor_s
    problems: int = 1  # P independent problems in one batch (Spec §13.3): each tick runs P x W rows
    tokens_per_s: float = 0.0  # P * W / s_per_tick
    independent_s_per_tick: float | None = None  # P x the one-problem s/tick (same ctx, W, run): P runs one by one
    ratio_independent: float | None = None  # s_per_tick / independent_s_per_tick (< 1: batching pays)
    split_kernel: str | None = None  # with ``split``: the common part's kernel (Spec §9.5, hogwild_ref.split)
    split_s_per_tick: float | None = None  # the same ticks through the split path, timed alternately with s_per_tick
    ratio_split: float | None = None  # split_s_per_tick / s_per_tick (< 1: the split path is faster)


def weight_bytes(model: Any) -> int:
    """Bytes of the model's parameters, every storage once (a tied embedding is read once per step)."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        st = p.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def read_bandwidth(device: torch.device | str = "cpu", nbytes: int = 1 << 29, repeat: int = 5) -> float:
    """Bytes per second of one full read of a large tensor (a sum over ``nbytes``), best of ``repeat``,
    with the current thread count: the rate a tick's weight and K/V reads are bounded by."""
    device = torch.device(device)
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(repeat + 1):  # the first read warms the pages
        _sync(device)
        t = time.perf_counter()
        x.sum()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    del x
    return nbytes / best


def _hf_kv_bytes(model: Any, ctx: int) -> int:
    """K/V bytes one single-sequence decode step reads at context ``ctx``."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * kv * head_dim * ctx * next(model.parameters()).element_size()


def random_model(shape: str, dtype: torch.dtype, device: str | torch.device) -> Any:
    """A random-weight model of a preset shape (:data:`MODEL_SHAPES`), built on ``device`` directly."""
    import transformers
    from transformers import AutoModelForCausalLM

    if shape not in MODEL_SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; choose one of {', '.join(MODEL_SHAPES)}")
    kw = dict(MODEL_SHAPES[shape])
    family = kw.pop("family")
    theta = kw.pop("rope_theta")
    config_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family]
    config = config_cls(max_position_embeddings=131072, **kw)
    config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_mem(device: torch.device) -> None:
    """Start a case's peak: CUDA's allocator statistics, or on Linux the process's peak resident set
    (writing 5 to ``/proc/self/clear_refs`` resets ``VmHWM``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux: the peak is the process's since it started
        pass


def _peak_mem(device: torch.device) -> int:
    """The peak since :func:`_reset_peak_mem`: CUDA's allocated bytes, or the process's resident set
    (``VmHWM``; without /proc, ``ru_maxrss``: the process's peak since it started)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _time_steps(step: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t) / steps


def _baseline_step(model: Any, ctx: int, steps: int, warmup: int, compiled: bool) -> float:
    """HF's single-sequence decode step at context ``ctx``: DynamicCache and the model's default
    attention, or (``compiled``) a StaticCache with the forward under ``torch.compile``."""
    from transformers import DynamicCache, StaticCache

    from .hf import cache_keyword

    device = next(model.parameters()).device
    kw = cache_keyword(model)
    gen = torch.Generator(device="cpu").manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, ctx), generator=gen).to(device)
    total = ctx + warmup + steps + 1
    cache = StaticCache(config=model.config, max_cache_len=total) if compiled else DynamicCache(config=model.config)
    forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True) if compiled else model.forward
    with torch.inference_mode():
        for start in range(0, ctx, 2048):  # chunked prefill
            chunk = prompt[:, start : start + 2048]
            pos = torch.arange(start, start + chunk.shape[1], device=device)[None]
            out = model(input_ids=chunk, position_ids=pos, cache_position=pos[0], use_cache=True, **{kw: cache},
                        logits_to_keep=1)
        state = {"pos": ctx, "tok": out.logits[:, -1].argmax(-1, keepdim=True)}

        def step() -> None:
            p = torch.tensor([[state["pos"]]], device=device)
            o = forward(input_ids=state["tok"], position_ids=p, cache_position=p[0], use_cache=True, **{kw: cache})
            state["tok"] = o.logits[:, -1].argmax(-1, keepdim=True).clone()
            state["pos"] += 1

        return _time_steps(step, steps, warmup, device)


def bench_ticks(model: Any, *, workers: Sequence[int] = (1, 2, 4, 8), contexts: Sequence[int] = (1024, 4096),
                layout: str = "combined", backend: str = "fast", steps: int = 10, warmup: int = 3,
                compile: bool | str | None = None, problems: Sequence[int] = (1,), split: bool | str = False,
                progress: Callable[[str], None] | None = None,
                on_result: Callable[[TickTiming], None] | None = None) -> list[TickTiming]:
    """Seconds per Hogwild tick for every (ctx, W, P), next to HF's single-sequence decode step.

    Method (issue 7): the common context holds ``ctx`` random tokens, every worker's current step
    holds :data:`STEP_TOKENS` tokens; then ticks of one token per worker (greedy, sampled on the
    device) are timed after ``warmup`` ticks. The baseline runs in the same process at the same
    context (``ctx + STEP_TOKENS``): HF's DynamicCache step with the model's default attention, and
    on CUDA also a compiled static-cache step. With ``P > 1`` in ``problems``, ``P`` such problems
    (each its own random context) run side by side in one union table (Spec §13.3), and the tick is
    compared with ``P`` one-problem ticks (the ``P = 1`` case, measured in the same run).

    ``split`` (True: the device's kernel, or a kernel's name, :mod:`hogwild_ref.split`): every
    one-problem case is also timed through the split common part (Spec §9.5, §9.6), on the same
    storage in the same run: :data:`SPLIT_ROUNDS` rounds that alternate the score-row path and the
    split path, ``steps`` ticks each, best round of each (``s_per_tick`` is then that best too). The
    split path runs on eager ticks only: refused with a compiled step.
    """
    from .split import kernel_for

    device = next(model.parameters()).device
    kernel = kernel_for(split, device)
    if kernel is not None and (compile if compile is not None else device.type == "cuda"):
        raise ValueError("the split path runs on eager ticks (a compiled step keeps the score-row path, Spec §9.6); "
                         "add --compile no (compile=False)")
    say = progress or (lambda msg: None)
    budget = STEP_TOKENS + warmup + steps + 8
    out: list[TickTiming] = []
    say("read bandwidth")
    bandwidth, weights = read_bandwidth(device), weight_bytes(model)
    for ctx in contexts:
        say(f"baseline ctx={ctx}")
        base = _baseline_step(model, ctx + STEP_TOKENS, steps, warmup, compiled=False)
        cbase = _baseline_step(model, ctx + STEP_TOKENS, steps, warmup, compiled=True) if device.type == "cuda" else None
        for w in workers:
            single: float | None = None
            for P in sorted(set(problems) | {1}):
                say(f"{backend} {layout} W={w} ctx={ctx}" + (f" P={P}" if P > 1 else ""))
                _reset_peak_mem(device)
                s, kv_bytes, s_split = _time_problems(model, layout, backend, compile, w, ctx, P, steps, warmup,
                                                      budget, kernel if P == 1 else None)
                single = s if P == 1 else single
                if P not in problems:
                    continue
                floor = (weights + kv_bytes) / bandwidth
                base_floor = (weights + _hf_kv_bytes(model, ctx + STEP_TOKENS)) / bandwidth
                indep = None if P == 1 or single is None else P * single
                out.append(TickTiming(
                    backend=backend, layout=layout, workers=w, ctx=ctx, s_per_tick=s, baseline_s_per_step=base,
                    ratio=s / base, compiled_baseline_s_per_step=cbase,
                    ratio_compiled=(s / cbase) if cbase else None, peak_mem_bytes=_peak_mem(device),
                    device=machine(), threads=torch.get_num_threads(), kv_bytes_per_tick=kv_bytes,
                    weight_bytes=weights, bandwidth=bandwidth, floor_s=floor, ratio_floor=s / floor,
                    baseline_floor_s=base_floor, baseline_ratio_floor=base / base_floor, problems=P,
                    tokens_per_s=P * w / s, independent_s_per_tick=indep,
                    ratio_independent=None if indep is None else s / indep,
                    split_kernel=kernel if s_split is not None else None, split_s_per_tick=s_split,
                    ratio_split=None if s_split is None else s_split / s,
                ))
                if on_result is not None:  # each case as it is measured (kept when a later one is interrupted)
                    on_result(out[-1])
    return out


#: rounds of alternating score-row and split ticks per ``bench ticks`` case with ``split``
SPLIT_ROUNDS = 3


def _time_problems(model: Any, layout: str, backend: str, compile: bool | str | None, w: int, ctx: int, P: int,
                   steps: int, warmup: int, budget: int, split: str | None = None) -> tuple[float, int, float | None]:
    """Seconds per tick of ``P`` problems of ``w`` workers at context ``ctx`` in one batch (one union
    table for ``P > 1``, Spec §13.3), the K/V bytes the fast path reads per tick, and (``split``: a
    kernel) the seconds per tick through the split path, alternating with the score-row path."""
    from .batch import union_tables
    from .engine import Engine, Prepared
    from .hf import use_hogwild_attention
    from .scheduler import SchedulerConfig
    from .segments import Row

    device = next(model.parameters()).device
    engine = Engine(model, None, workers=w, layout=layout, backend=backend, finisher=False, compile=compile,
                    scheduler=SchedulerConfig(max_ticks=budget, eos_token_ids=frozenset()))
    forward = engine.forward
    table = make_layout(layout, w)
    gen = torch.Generator(device="cpu").manual_seed(2)
    first = table.segments[0].id
    union = union_tables([table] * P)[0] if P > 1 else table
    storage = None
    with use_hogwild_attention(model), torch.inference_mode():
        for b in range(P):
            static = {first: torch.randint(0, model.config.vocab_size, (ctx,), generator=gen).tolist()}
            for seg in table.segments[1:]:
                if seg.writer is None:
                    static[seg.id] = torch.randint(0, model.config.vocab_size, (4,), generator=gen).tolist()
            caps = engine.capacities(Prepared(table, first, static))
            own = forward.storage(table, caps)
            forward.prefill(own, first, static, 2048)
            if P == 1:
                storage = own
                break
            if storage is None:
                storage = forward.storage(union, {f"p{i}/{k}": v for i in range(P) for k, v in caps.items()})
            storage.copy_from(own, f"p{b}/")
        assert storage is not None
        steps_ids = [torch.randint(0, model.config.vocab_size, (STEP_TOKENS,), generator=gen).tolist()
                     for _ in range(w * P)]
        logits = forward(storage, storage.table.rows([STEP_TOKENS] * (w * P)), steps_ids)
        assert logits is not None
        state = {"ids": logits.argmax(-1).tolist()}

        def tick() -> None:
            feeds = [[t] for t in state["ids"]]
            lg = forward(storage, [Row(v, 1) for v in storage.table.views], feeds)
            assert lg is not None
            state["ids"] = lg.argmax(-1).tolist()

        s_split: float | None = None
        if split is None:
            s = _time_steps(tick, steps, warmup, device)
        else:  # alternate the two paths on the same storage (each switch warms up again: flex compiles once)
            s = s_split = float("inf")
            for _ in range(SPLIT_ROUNDS):
                forward.split = False
                s = min(s, _time_steps(tick, steps, warmup, device))
                forward.split = split
                s_split = min(s_split, _time_steps(tick, steps, warmup, device))
            forward.split = False
        kv_bytes = storage.decode_read_bytes(compiled=bool(forward.compile)) if backend == "fast" else 0
        if not kv_bytes:  # no fast path's windows: every stored token's K/V once, the least a tick can read
            kv_bytes = _hf_kv_bytes(model, sum(seg.length for seg in storage.table.segments))
    return s, kv_bytes, s_split
