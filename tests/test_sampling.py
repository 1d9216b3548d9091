"""Token sampling (greedy, temperature, top-k, top-p, min-p) and its use by the engine.

Expected kept sets are computed independently, in float64 with plain Python loops; hypothesis
examples whose decision sits within rounding distance of a threshold are skipped with ``assume``.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import hogwild_ref
from hogwild_ref.models import tiny_model
from hogwild_ref.sampling import SamplingConfig, filter_logits, sample

MARGIN = 1e-5  # relative distance from a threshold below which float32 vs float64 may disagree


def distinct_logits(min_size: int = 2, max_size: int = 24):
    return st.lists(
        st.floats(min_value=-8.0, max_value=8.0, allow_nan=False, allow_infinity=False, width=32),
        min_size=min_size, max_size=max_size, unique=True,
    ).filter(lambda xs: all(abs(a - b) > 1e-3 for i, a in enumerate(xs) for b in xs[i + 1:]))


def softmax64(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def kept(filtered: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(filtered.tolist()) if v != float("-inf")}


# ---------------------------------------------------------------------- config validation
@pytest.mark.parametrize("kwargs,word", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),  # not >= 0 either; sampling would fail later in torch
    (dict(temperature=1.0, top_k=0), "top_k"),
    (dict(temperature=1.0, top_k=-3), "top_k"),
    (dict(temperature=1.0, top_p=0.0), "top_p"),
    (dict(temperature=1.0, top_p=-0.5), "top_p"),
    (dict(temperature=1.0, top_p=1.01), "top_p"),
    (dict(temperature=1.0, min_p=1.0), "min_p"),
    (dict(temperature=1.0, min_p=-0.1), "min_p"),
], ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else None)
def test_config_rejects_invalid_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SamplingConfig(**kwargs)


def test_config_accepts_boundaries():
    assert SamplingConfig().greedy
    assert SamplingConfig(temperature=0.0).greedy
    cfg = SamplingConfig(temperature=0.5, top_k=1, top_p=1.0, min_p=0.0)
    assert not cfg.greedy


# ---------------------------------------------------------------------- greedy
@given(distinct_logits(min_size=1))
def test_greedy_is_argmax(xs):
    logits = torch.tensor(xs, dtype=torch.float32)
    expected = max(range(len(xs)), key=lambda i: xs[i])
    assert sample(logits, SamplingConfig()) == expected


def test_greedy_ties_take_the_lowest_id():
    logits = torch.tensor([0.0, 3.0, -1.0, 3.0, 3.0])
    assert sample(logits, SamplingConfig()) == 1


def test_greedy_ignores_the_generator():
    logits = torch.tensor([0.1, 0.2, 5.0, 0.3])
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert sample(logits, SamplingConfig(), g) == 2
    assert torch.equal(g.get_state(), state)


# ---------------------------------------------------------------------- filters
@given(distinct_logits(), st.floats(min_value=0.25, max_value=4.0))
def test_temperature_scales_logits(xs, temperature):
    out = filter_logits(torch.tensor(xs), SamplingConfig(temperature=temperature))
    expected = torch.tensor([x / temperature for x in xs], dtype=torch.float32)
    torch.testing.assert_close(out, expected)


@given(distinct_logits(), st.integers(min_value=1, max_value=30))
def test_top_k_keeps_exactly_the_k_largest(xs, k):
    out = filter_logits(torch.tensor(xs), SamplingConfig(temperature=1.0, top_k=k))
    order = sorted(range(len(xs)), key=lambda i: -xs[i])
    assert kept(out) == set(order[: min(k, len(xs))])
    for i in kept(out):  # kept entries are unchanged (temperature 1)
        assert out[i].item() == pytest.approx(xs[i])


def top_p_prefix(probs: list[float], p: float) -> set[int]:
    """Spec §11.5's top-p set: the smallest prefix of the tokens sorted by probability, ties in
    increasing id (Python's sort is stable), reaching ``p``; examples whose running mass comes within
    rounding distance of ``p`` are skipped."""
    expected: set[int] = set()
    mass = 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        assume(abs(mass - p) > MARGIN)
        expected.add(i)
        mass += probs[i]
        if mass >= p:
            break
    assume(abs(mass - p) > MARGIN)
    return expected


@given(distinct_logits(), st.floats(min_value=0.05, max_value=0.99), st.sampled_from([0.5, 1.0, 2.0]))
def test_top_p_keeps_the_smallest_prefix_reaching_p(xs, p, temperature):
    probs = softmax64([x / temperature for x in xs])
    expected = top_p_prefix(probs, p)
    out = filter_logits(torch.tensor(xs), SamplingConfig(temperature=temperature, top_p=p))
    assert kept(out) == expected
    # it is the smallest such prefix: without its least likely member the mass is below p
    smaller = sum(probs[i] for i in expected) - min(probs[i] for i in expected)
    assert smaller < p


@given(st.integers(0, 2**32), st.integers(2, 5000), st.floats(min_value=0.05, max_value=0.95))
def test_top_p_keeps_the_lower_ids_of_tokens_tied_at_the_boundary(seed, vocab, p):
    """Spec §11.5: probabilities sorted with ties in increasing token id (found by a review: a plain
    sort kept an arbitrary 219 of 1000 tied tokens at a vocabulary of 49,152)."""
    rng = random.Random(seed)
    xs = [rng.choice((0.0, 0.5, 1.0)) for _ in range(vocab)]  # few values: many ties
    expected = top_p_prefix(softmax64(xs), p)
    out = filter_logits(torch.tensor(xs), SamplingConfig(temperature=1.0, top_p=p))
    assert kept(out) == expected


@given(distinct_logits(), st.floats(min_value=0.01, max_value=0.95))
def test_min_p_keeps_tokens_above_a_fraction_of_the_top(xs, min_p):
    probs = softmax64(xs)
    threshold = min_p * max(probs)
    assume(all(abs(q - threshold) > MARGIN * threshold for q in probs))
    out = filter_logits(torch.tensor(xs), SamplingConfig(temperature=1.0, min_p=min_p))
    assert kept(out) == {i for i, q in enumerate(probs) if q >= threshold}


def test_top_k_then_top_p_renormalises_over_the_survivors():
    # probs 0.5, 0.3, 0.15, 0.05 -> top_k=3 renormalised: 0.5/0.95, 0.3/0.95, 0.15/0.95
    probs = [0.5, 0.3, 0.15, 0.05]
    logits = torch.tensor([math.log(q) for q in probs])
    # 0.5/0.95 = 0.526 < 0.8 <= 0.842 = 0.8/0.95: keeps {0, 1}
    out = filter_logits(logits, SamplingConfig(temperature=1.0, top_k=3, top_p=0.8))
    assert kept(out) == {0, 1}
    # without top_k, 0.5 + 0.3 = 0.8 would reach 0.8; with 0.81 it needs the third token
    out = filter_logits(logits, SamplingConfig(temperature=1.0, top_p=0.81))
    assert kept(out) == {0, 1, 2}


def test_filters_never_remove_the_most_likely_token():
    logits = torch.tensor([0.0, 10.0, 1.0, 2.0])
    for cfg in (SamplingConfig(1.0, top_k=1), SamplingConfig(1.0, top_p=0.01), SamplingConfig(1.0, min_p=0.99)):
        assert kept(filter_logits(logits, cfg)) == {1}


# ---------------------------------------------------------------------- stochastic sampling
def _draw(logits, cfg, seed, n):
    g = torch.Generator().manual_seed(seed)
    return [sample(logits, cfg, g) for _ in range(n)]


def test_sampling_is_reproducible_with_a_seeded_generator():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    cfg = SamplingConfig(temperature=1.0)
    a, b, c = _draw(logits, cfg, 7, 200), _draw(logits, cfg, 7, 200), _draw(logits, cfg, 8, 200)
    assert a == b
    assert a != c
    assert len(set(a)) > 1  # not greedy


def _chi_square(draws: list[int], expected_probs: list[float]) -> float:
    n = len(draws)
    return sum((draws.count(i) - n * q) ** 2 / (n * q) for i, q in enumerate(expected_probs))


# chi-square with 3 degrees of freedom: P(X > 27.9) = 4e-6; a uniform sampler scores ~600 here
CHI2_BOUND = 27.9


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_sampling_follows_the_tempered_distribution(temperature):
    probs = [0.1, 0.2, 0.3, 0.4]
    logits = torch.tensor([math.log(q) for q in probs])
    draws = _draw(logits, SamplingConfig(temperature=temperature), 123, 2000)
    tempered = [q ** (1 / temperature) for q in probs]
    expected = [q / sum(tempered) for q in tempered]
    assert _chi_square(draws, expected) < CHI2_BOUND
    if temperature != 1.0:  # and not the untempered one
        assert _chi_square(draws, probs) > CHI2_BOUND


def test_sampling_never_draws_filtered_tokens():
    probs = [0.1, 0.2, 0.3, 0.4]
    logits = torch.tensor([math.log(q) for q in probs])
    draws = _draw(logits, SamplingConfig(temperature=1.0, top_k=2), 5, 1000)
    assert set(draws) == {2, 3}
    # renormalised over the survivors: 3/7 and 4/7
    assert draws.count(3) / len(draws) == pytest.approx(4 / 7, abs=0.06)


# ---------------------------------------------------------------------- the engine's sampling
MAX_STEPS = 8
PROBLEM = "What is 2 + 3?"


@pytest.fixture(scope="module")
def tiny_llama(smollm_tokenizer):
    return tiny_model("llama", vocab_size=len(smollm_tokenizer))


def _run(model, tok, **kwargs):
    return hogwild_ref.generate(model, tok, PROBLEM, workers=2, max_ticks=MAX_STEPS, finisher=False,
                                collab_every=None, **kwargs)


def _tokens(result):
    return [w.tokens for w in result.workers]


def test_engine_sampling_is_seeded_per_worker(tiny_llama, smollm_tokenizer):
    tok = smollm_tokenizer
    a = _run(tiny_llama, tok, temperature=1.0, seed=5, record_logits=True)
    b = _run(tiny_llama, tok, temperature=1.0, seed=5)
    c = _run(tiny_llama, tok, temperature=1.0, seed=6)
    assert a.ticks == MAX_STEPS
    assert _tokens(a) == _tokens(b)
    assert _tokens(a) != _tokens(c)
    # replay: worker w draws from softmax(logits) with its own generator seeded seed + w
    assert a.logits is not None and len(a.logits) == a.ticks
    for w, worker in enumerate(a.workers):
        g = torch.Generator().manual_seed(5 + w)
        assert len(worker.tokens) == a.ticks
        for t, token in enumerate(worker.tokens):
            probs = a.logits[t][w].float().softmax(-1)
            assert int(torch.multinomial(probs, 1, generator=g)) == token, (w, t)


def test_engine_top_k_one_is_greedy(tiny_llama, smollm_tokenizer):
    tok = smollm_tokenizer
    greedy = _run(tiny_llama, tok, temperature=0.0, record_logits=True)
    top1 = _run(tiny_llama, tok, temperature=1.0, top_k=1, seed=11)
    assert _tokens(top1) == _tokens(greedy)
    # and greedy really is the argmax of each tick's logits
    for w, worker in enumerate(greedy.workers):
        for t, token in enumerate(worker.tokens):
            assert token == int(greedy.logits[t][w].argmax())


# ---------------------------------------------------------------------- extremes (found by a newcomer)
@given(distinct_logits(), st.sampled_from([1e-30, 1e-44, 1e-300, 5e-324]))
def test_a_temperature_too_small_for_float32_samples_the_argmax(xs, temperature):
    """``logits / 1e-300`` overflows (or 1e-300 rounds to 0 in float32): every probability was NaN and
    sampling raised. The limit of a vanishing temperature is greedy: the largest logit, always."""
    logits = torch.tensor(xs)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        assert sample(logits, SamplingConfig(temperature=temperature), g) == int(logits.argmax())
    assert sample(logits - 1e3, SamplingConfig(temperature=temperature), g) == int(logits.argmax())  # all negative


@given(distinct_logits(), st.sampled_from([0.5, 1.0, 2.0]))
def test_a_top_p_below_float32_keeps_the_most_likely_token(xs, temperature):
    logits = torch.tensor(xs)
    out = filter_logits(logits, SamplingConfig(temperature=temperature, top_p=1e-300))
    assert torch.isfinite(out).sum() == 1 and int(out.argmax()) == int(logits.argmax())


@given(distinct_logits(), st.floats(min_value=0.01, max_value=100.0))
def test_an_ordinary_temperature_divides_exactly_as_before(xs, temperature):
    logits = torch.tensor(xs)  # the guard for tiny temperatures leaves the plain quotient bit for bit
    assert torch.equal(filter_logits(logits, SamplingConfig(temperature=temperature)), logits / temperature)


def test_sampling_options_with_greedy_decoding_are_said_to_do_nothing():
    """Found by a newcomer: ``generate(..., top_p=0.5, top_k=3)`` decoded greedily (temperature 0) without a word."""
    from hogwild_ref.settings import Settings

    with pytest.warns(UserWarning, match=r"^top_k and top_p have no effect with temperature 0") as said:
        Settings(top_p=0.5, top_k=3)
    assert said[0].filename == __file__  # it names the caller's line, not the library's
    with pytest.warns(UserWarning, match=r"^--min-p has no effect"):
        Settings.from_flags(min_p=0.1)


def test_helpers_refuse_wrong_shapes_and_types_in_one_line():
    """Found by a newcomer: ``sample`` of a (2, V) tensor raised TypeError from int() of a list, mismatched
    rows a zip() error, ``top_k=2.5`` was accepted. Run as a user runs it: in a process without this
    suite's run-time annotation checks (which refuse these arguments before the function body)."""
    import json
    import subprocess
    import sys

    script = """
import json, torch
from hogwild_ref.sampling import SamplingConfig, sample, sample_rows
cfg = SamplingConfig(temperature=1.0)
said = []
for call in (lambda: sample(torch.randn(2, 10), cfg), lambda: sample(torch.tensor(1.0), cfg),
             lambda: sample_rows(torch.randn(10), [True], cfg, [None]),
             lambda: sample_rows(torch.randn(3, 10), [True], cfg, [None]),
             lambda: SamplingConfig(temperature=1.0, top_k=2.5), lambda: SamplingConfig(temperature="1")):
    try:
        call()
        said.append(None)
    except ValueError as exc:
        said.append(str(exc))
print(json.dumps(said))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    said = json.loads(out.stdout)
    assert said[0] == "sample() takes one row of logits of shape (V,); got shape (2, 10) (sample_rows() takes (R, V))"
    assert said[1].startswith("sample() takes one row of logits of shape (V,); got shape ()")
    assert said[2] == "sample_rows() takes logits of shape (R, V); got shape (10,)"
    assert said[3].startswith("sample_rows(): logits have 3 rows, so give 3 active flags and generators; got 1 and 1")
    assert "top_k" in said[4] and "2.5" in said[4]
    assert "temperature must be a finite number" in said[5]


def test_a_fraction_temperature_samples_as_a_float():
    """A review: ``generate(..., temperature=Fraction(1, 2))`` passed the checks, then failed dividing
    the logits at the first tick; the settings now hold Python floats, as their JSON does."""
    from fractions import Fraction

    from hogwild_ref.settings import Settings

    settings = Settings(temperature=Fraction(1, 2), top_p=Fraction(9, 10), min_p=Fraction(1, 100))
    assert [type(v) for v in (settings.temperature, settings.top_p, settings.min_p)] == [float, float, float]
    cfg = SamplingConfig(settings.temperature, settings.top_k, settings.top_p, settings.min_p)
    assert sample(torch.tensor([0.0, 1.0, 2.0, 3.0]), cfg, torch.Generator().manual_seed(0)) in {1, 2, 3}
