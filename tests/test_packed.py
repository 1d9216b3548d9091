"""packed.PackedLinear (Spec §9.6, CPU linear layers): while entered, a float32 CPU linear layer called
with at least ``MIN_ROWS`` rows answers from its oneDNN-packed weight, whatever the row count; every
other call, and everything after exit, is the module's own forward. The oracle is
``torch.nn.functional.linear`` on the same weight."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hogwild_ref.engine import Engine
from hogwild_ref.models import tiny_model
from hogwild_ref.packed import MIN_ROWS, PackedLinear, packable_bytes, packing_available
from hogwild_ref.scheduler import SchedulerConfig

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN packed linear")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 8, bias=False))


def _ran_packed(prof: torch.profiler.profile) -> bool:
    return any(e.key == "mkldnn::_linear_pointwise" for e in prof.key_averages())


def test_calls_of_two_rows_or_more_are_packed_and_one_row_is_untouched() -> None:
    """Every row count from ``MIN_ROWS`` up is served by the one pack (leading dims flattened into rows),
    within rounding of the plain product; a one-row call is the module's own forward, bit for bit."""
    model = _model()
    lin, out = model[0], model[2]
    packed = PackedLinear(model)
    assert MIN_ROWS == 2
    for n in range(1, 12):
        x = torch.randn(1, n, 24) if n % 2 else torch.randn(n, 24)
        with packed, torch.profiler.profile() as prof:
            assert "forward" in lin.__dict__
            y = lin(x)
            z = out(torch.relu(y))
        assert _ran_packed(prof) == (n >= MIN_ROWS), n
        assert y.shape == (*x.shape[:-1], 40) and z.shape == (*x.shape[:-1], 8)
        plain_y = torch.nn.functional.linear(x, lin.weight, lin.bias)
        if n < MIN_ROWS:
            assert torch.equal(y, plain_y)
        torch.testing.assert_close(y, plain_y, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(z, torch.nn.functional.linear(torch.relu(y), out.weight), rtol=1e-6, atol=1e-6)
    assert "forward" not in lin.__dict__ and "forward" not in out.__dict__


@settings(max_examples=40, deadline=None)
@given(d_in=st.integers(1, 700), d_out=st.integers(1, 2000), bias=st.booleans(), total=st.integers(3, 40),
       data=st.data())
def test_a_row_is_computed_the_same_whatever_rows_share_its_call(d_in: int, d_out: int, bias: bool, total: int,
                                                                   data: st.DataObject) -> None:
    """The rows ``s:s+m`` of a ``total``-row call equal, bit for bit, the same rows called on their own
    (m >= MIN_ROWS): what lets a problem batched with others get its run alone's linear outputs (Spec
    §9.6, "CPU linear layers"; oneDNN's product on this project's CPUs)."""
    m = data.draw(st.integers(MIN_ROWS, total - 1))
    s = data.draw(st.integers(0, total - m))
    torch.manual_seed(d_in * 7919 + d_out)
    lin = torch.nn.Linear(d_in, d_out, bias=bias)
    x = torch.randn(total, d_in)
    with PackedLinear(torch.nn.Sequential(lin)):
        whole, alone = lin(x)[s : s + m], lin(x[s : s + m].clone())
    assert torch.equal(whole, alone)
    scale = (x[s : s + m].abs() @ lin.weight.abs().T).max().item() + 1.0  # the product's magnitude bound
    torch.testing.assert_close(whole, torch.nn.functional.linear(x[s : s + m], lin.weight, lin.bias),
                               rtol=0, atol=4e-7 * scale * d_in ** 0.5)


def test_exit_restores_on_error() -> None:
    model = _model()
    packed = PackedLinear(model)
    with pytest.raises(ZeroDivisionError), packed:
        assert "forward" in model[2].__dict__
        raise ZeroDivisionError("inside the block")
    assert "forward" not in model[0].__dict__ and "forward" not in model[2].__dict__
    with packed, torch.profiler.profile() as prof:  # entered again after the error
        model(torch.randn(2, 24))
    assert _ran_packed(prof)


class _LoRA(torch.nn.Linear):
    """A loralib-style adapted layer: an ``nn.Linear`` whose forward adds a low-rank product."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__(d_in, d_out, bias=False)
        self.a = torch.nn.Parameter(torch.randn(3, d_in))
        self.b = torch.nn.Parameter(torch.randn(d_out, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight) + x @ self.a.T @ self.b.T


class _Router(torch.nn.Linear):
    """A router written as an ``nn.Linear`` subclass that returns a tuple (as PhiMoE's does)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = torch.nn.functional.linear(x, self.weight)
        return logits, logits.softmax(-1)


@pytest.mark.parametrize("kind", ["lora subclass", "router subclass", "instance forward", "instance forward after packing"])
def test_a_layer_with_a_forward_of_its_own_answers_itself(kind: str) -> None:
    """Spec §9.6, "CPU linear layers": only layers computing ``nn.Linear``'s own product are packed. A
    subclass with its own forward (LoRA, quantised, a router) or an instance forward (a hook) answers
    every call itself, bit for bit: the packed product replaced them (wrong logits; a crash for a
    router returning a tuple), the proof not seeing it (it runs unpacked)."""
    torch.manual_seed(0)
    model = _model()
    if kind == "lora subclass":
        model[2] = _LoRA(40, 8)
    elif kind == "router subclass":
        model[2] = _Router(40, 8, bias=False)
    seen: list[tuple[int, ...]] = []
    plain = model[2]

    def hooked(x: torch.Tensor) -> torch.Tensor:  # what e.g. an offloading hook installs on the instance
        seen.append(tuple(x.shape))
        return torch.nn.functional.linear(x, plain.weight) * 2.0

    if kind == "instance forward":
        plain.forward = hooked  # type: ignore[method-assign]
    packed = PackedLinear(model)
    if kind == "instance forward after packing":
        plain.forward = hooked  # type: ignore[method-assign]
        assert not packed.current()  # the caller packs again
        assert len(PackedLinear(model)._layers) == 1  # packed again, the hooked layer is left out
    x = torch.relu(torch.nn.functional.linear(torch.randn(5, 24), model[0].weight, model[0].bias))
    expected = plain(x)
    with packed, torch.profiler.profile() as prof:
        got = plain(x)
        model[0](torch.randn(5, 24))
    assert _ran_packed(prof)  # the plain first layer still is packed
    if isinstance(expected, tuple):
        assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    else:
        assert torch.equal(got, expected)
    if kind.startswith("instance"):
        assert seen == [(5, 40), (5, 40)] and plain.__dict__["forward"] is hooked
    assert packable_bytes(model) == model[0].weight.numel() * 4


def test_a_replaced_weight_is_not_served_from_the_stale_packed_copy() -> None:
    model = _model()
    lin = model[0]
    packed = PackedLinear(model)
    lin.weight = torch.nn.Parameter(torch.randn(40, 24))
    x = torch.randn(2, 24)
    with packed:
        y = lin(x)
    assert torch.equal(y, torch.nn.functional.linear(x, lin.weight, lin.bias))


def test_not_reentrant() -> None:
    packed = PackedLinear(_model())
    with packed, pytest.raises(RuntimeError, match="not reentrant"):
        packed.__enter__()


def test_a_weight_edited_in_place_is_not_served_from_the_stale_packed_copy() -> None:
    model = _model()
    lin = model[0]
    packed = PackedLinear(model)
    assert packed.current()
    with torch.no_grad():
        lin.weight.mul_(2.0)  # as an ablation that edits a layer between runs does
    model[2].weight.data = torch.randn(8, 40)  # new data under the same parameter
    assert not packed.current()
    x, h = torch.randn(2, 24), torch.randn(2, 40)
    with packed, torch.profiler.profile() as prof:
        y, z = lin(x), model[2](h)
    assert not _ran_packed(prof)
    assert torch.equal(y, torch.nn.functional.linear(x, lin.weight, lin.bias))
    assert torch.equal(z, torch.nn.functional.linear(h, model[2].weight))
    assert PackedLinear(model).current()


def test_an_engine_run_after_an_in_place_edit_uses_the_edited_weights(char_tokenizer) -> None:
    """The engine keeps its packed copies between runs; an edit in place between runs packs again.
    Oracle: a new engine on the edited model (same arithmetic, packed from scratch)."""
    model = tiny_model("llama", seed=3, vocab_size=len(char_tokenizer))

    def run(engine: Engine) -> list[torch.Tensor]:
        return engine.run("What is 7 * 6?").logits

    def engine() -> Engine:
        sched = SchedulerConfig(max_ticks=6, eos_token_ids=frozenset())
        return Engine(model, char_tokenizer, workers=4, layout="combined", backend="fast", scheduler=sched,
                      record_logits=True, finisher=False)

    kept = engine()
    before = run(kept)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    after, fresh = run(kept), run(engine())
    assert len(after) == len(fresh) == len(before)
    assert all(torch.equal(a, f) for a, f in zip(after, fresh))
    assert not all(torch.equal(a, b) for a, b in zip(after, before))


def test_default_packing_gives_way_to_a_lack_of_memory(char_tokenizer, monkeypatch) -> None:
    """By default the packed copy is made only when it takes at most half of the available memory;
    otherwise the engine warns once and runs unpacked (the same arithmetic as pack_weights=False)."""
    model = tiny_model("llama", seed=3, vocab_size=len(char_tokenizer))
    need = packable_bytes(model)
    assert need == sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))

    def run(pack: bool | None) -> tuple[list[torch.Tensor], bool]:
        sched = SchedulerConfig(max_ticks=4, eos_token_ids=frozenset())
        engine = Engine(model, char_tokenizer, workers=2, layout="combined", backend="fast", scheduler=sched,
                        record_logits=True, finisher=False, pack_weights=pack)
        with torch.profiler.profile() as prof:
            logits = engine.run("What is 7 * 6?").logits
        return logits, _ran_packed(prof)

    monkeypatch.setattr("hogwild_ref.forward.available_memory", lambda: 2 * need - 1)
    with pytest.warns(UserWarning, match="not packing the linear weights") as caught:
        short, packed = run(None)
    assert not packed and len([w for w in caught if "not packing" in str(w.message)]) == 1
    unpacked, _ = run(False)
    assert all(torch.equal(a, b) for a, b in zip(short, unpacked, strict=True))
    assert run(True)[1]  # asked for: packed whatever the memory
    monkeypatch.setattr("hogwild_ref.forward.available_memory", lambda: 2 * need)
    assert run(None)[1]


def test_engines_on_one_model_share_one_packed_copy_which_goes_with_the_model(char_tokenizer) -> None:
    """A memory review: every live Engine held a packed copy of its own (513 MB each for the embedded model)."""
    import gc
    import weakref

    model = tiny_model("llama", seed=3, vocab_size=len(char_tokenizer))
    first, second = (Engine(model, char_tokenizer, workers=2, pack_weights=True) for _ in range(2))
    packed = first.forward._packed_linear()
    assert packed is not None and packed is second.forward._packed_linear()
    gone = weakref.ref(packed)
    del first, second, packed, model
    gc.collect()
    assert gone() is None
