"""packed.PackedLinear (Spec §9.6, CPU linear layers): while entered, a float32 CPU linear layer called
with a row count of the pack's size (``pack_size``) answers from its packed weight, zero rows added up
to that size; every other call, and everything after exit, is the module's own forward. The oracle is
``torch.nn.functional.linear`` on the same weight."""

from __future__ import annotations

import pytest
import torch

from hogwild_ref.engine import Engine
from hogwild_ref.models import tiny_model
from hogwild_ref.packed import PackedLinear, pack_size, packable_bytes, packing_available
from hogwild_ref.scheduler import SchedulerConfig

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no MKL packed GEMM")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 8, bias=False))


def _ran_packed(prof: torch.profiler.profile) -> bool:
    return any(e.key == "mkl::_mkl_linear" for e in prof.key_averages())


def test_packed_rows_match_linear_and_other_rows_are_untouched() -> None:
    model = _model()
    lin = model[0]
    packed = PackedLinear(model, rows=4)
    x4, x5 = torch.randn(4, 1, 24), torch.randn(5, 24)
    with packed:
        assert "forward" in lin.__dict__
        y4 = lin(x4)
        with torch.profiler.profile() as prof:
            y5 = lin(x5)
        assert not _ran_packed(prof)
        with torch.profiler.profile() as prof:
            lin(x4)
        assert _ran_packed(prof)
    torch.testing.assert_close(y4, torch.nn.functional.linear(x4, lin.weight, lin.bias), rtol=1e-6, atol=1e-6)
    assert torch.equal(y5, torch.nn.functional.linear(x5, lin.weight, lin.bias))
    assert y4.shape == (4, 1, 40)
    assert "forward" not in lin.__dict__ and "forward" not in model[2].__dict__


def test_pack_sizes() -> None:
    """3 rows are packed for 4 and 5-7 rows for 8 (measured faster padded, docstring of ``pack_size``);
    every other count for itself."""
    assert [pack_size(n) for n in range(1, 18)] == [1, 2, 4, 4, 8, 8, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]


@pytest.mark.parametrize("rows", [3, 6])
def test_counts_of_one_pack_size_are_served_padded(rows: int) -> None:
    """One pack serves every row count of its size, zero rows added and their outputs dropped; a
    count of another size is the module's own forward."""
    model = _model()
    lin, out = model[0], model[2]
    packed = PackedLinear(model, rows=rows)
    assert packed.size == pack_size(rows)
    served = [n for n in range(1, 12) if pack_size(n) == packed.size]
    assert rows in served and packed.size in served and len(served) > 1
    for n in range(1, 12):
        x = torch.randn(1, n, 24) if n % 2 else torch.randn(n, 24)  # leading dims flattened into rows
        with packed, torch.profiler.profile() as prof:
            y = lin(x)
            z = out(torch.relu(y))
        assert _ran_packed(prof) == (n in served), n
        assert y.shape == (*x.shape[:-1], 40) and z.shape == (*x.shape[:-1], 8)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(z, torch.nn.functional.linear(torch.relu(y), out.weight), rtol=1e-6, atol=1e-6)


def test_exit_restores_on_error_and_keeps_an_instance_forward() -> None:
    model = _model()
    lin = model[2]
    seen: list[tuple[int, ...]] = []

    def hooked(x: torch.Tensor) -> torch.Tensor:  # what e.g. an offloading hook installs on the instance
        seen.append(tuple(x.shape))
        return torch.nn.functional.linear(x, lin.weight)

    lin.forward = hooked  # type: ignore[method-assign]
    packed = PackedLinear(model, rows=2)
    with pytest.raises(ZeroDivisionError), packed:
        out = lin(torch.randn(3, 40))  # not 2 rows: the instance's own forward answers
        raise ZeroDivisionError("inside the block")
    assert seen == [(3, 40)] and out.shape == (3, 8)
    assert lin.__dict__["forward"] is hooked and "forward" not in model[0].__dict__
    with packed, torch.profiler.profile() as prof:  # entered again after the error
        lin(torch.randn(2, 40))
    assert seen == [(3, 40)] and _ran_packed(prof)  # the 2-row call went to the packed weight


def test_a_replaced_weight_is_not_served_from_the_stale_packed_copy() -> None:
    model = _model()
    lin = model[0]
    packed = PackedLinear(model, rows=2)
    lin.weight = torch.nn.Parameter(torch.randn(40, 24))
    x = torch.randn(2, 24)
    with packed:
        y = lin(x)
    assert torch.equal(y, torch.nn.functional.linear(x, lin.weight, lin.bias))


def test_not_reentrant() -> None:
    packed = PackedLinear(_model(), rows=2)
    with packed, pytest.raises(RuntimeError, match="not reentrant"):
        packed.__enter__()


def test_a_weight_edited_in_place_is_not_served_from_the_stale_packed_copy() -> None:
    model = _model()
    lin = model[0]
    packed = PackedLinear(model, rows=2)
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
    assert PackedLinear(model, rows=2).current()


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
        engine = Engine(model, char_tokenizer, workers=4, layout="combined", backend="fast", scheduler=sched,
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
