"""Correctness of answers by math-verify (Spec §13.1): a table of real MATH/AIME answer forms.

Oracle: each pair's verdict is decided by mathematics (the reason is in the table), not by running
the checker. Equivalence is symmetric, so each pair is checked both ways round. Pairs where the
checker is known to differ from mathematics are listed in docs/evaluation.md, not here.
"""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from hogwild_ref.evaluation import answers
from hogwild_ref.evaluation.answers import Verdict, check_answer, checker_version, extract_answer, majority_vote

T, F = True, False

# (gold as MATH/AIME write it, a model's answer, equivalent?, why)
MATH_PAIRS = [
    ("\\frac{1}{2}", "0.5", T, "1/2 = 0.5 exactly"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}", T, "\\dfrac is the display style of the same fraction"),
    ("\\frac{3}{4}", "3/4", T, "the same fraction written inline"),
    ("\\frac{1}{3}", "0.333", F, "0.333 = 333/1000, not 1/3"),
    ("\\frac{7}{2}", "3.5", T, "7/2 = 3.5 exactly"),
    ("1.5", "\\frac32", T, "\\frac32 is 3/2 = 1.5"),
    ("0.1", "\\frac{1}{10}", T, "1/10 = 0.1"),
    ("\\frac{9}{4}", "2\\frac{1}{4}", T, "the mixed number 2 1/4 is 9/4"),
    ("-\\frac{1}{2}", "\\frac{-1}{2}", T, "-(1/2) = (-1)/2"),
    ("-5", "5", F, "opposite signs"),
    ("7", "8", F, "different integers"),
    ("12", "12.0", T, "the same number"),
    ("10^{10}", "10000000000", T, "10^10 written out"),
    ("2^{-1}", "0.5", T, "2^-1 = 1/2"),
    ("1,000", "1000", T, "a thousands separator (MATH writes 1,000)"),
    ("033", "33", T, "AIME's zero-padded 033 is 33"),
    ("10", "10\\text{ cm}", T, "MATH grades the number; the unit is not part of it"),
    ("\\$18.00", "18", T, "a dollar amount of 18"),
    ("30^\\circ", "30", T, "MATH asks for degrees; the degree sign is notation"),
    ("50\\%", "50", T, "MATH asks for the percentage; the percent sign is notation"),
    ("3", "x = 3", T, "the solution x = 3 gives the value 3"),
    ("2\\sqrt{2}", "\\sqrt{8}", T, "sqrt(8) = sqrt(4*2) = 2 sqrt(2)"),
    ("3\\sqrt{5}", "\\sqrt{45}", T, "sqrt(45) = 3 sqrt(5)"),
    ("5\\sqrt{2}", "5\\sqrt2", T, "\\sqrt2 is \\sqrt{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", T, "the same product"),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", T, "the same quotient written inline"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", T, "rationalising 1/sqrt(2) gives sqrt(2)/2"),
    ("4\\sqrt{3}", "6.928", F, "4 sqrt(3) = 6.92820..., irrational; 6.928 is not it"),
    ("\\pi", "3.14", F, "3.14 is not pi"),
    ("2\\pi", "\\pi \\cdot 2", T, "multiplication commutes"),
    ("\\frac{\\pi}{4}", "\\frac{1}{4}\\pi", T, "pi/4 = (1/4) pi"),
    ("x^2+2x+1", "(x+1)^2", T, "(x+1)^2 expands to x^2 + 2x + 1"),
    ("1+i", "i+1", T, "addition commutes"),
    ("\\infty", "-\\infty", F, "opposite infinities"),
    ("(1,2]", "(1, 2]", T, "the same interval, spaced differently"),
    ("[0,1]", "[0, 1]", T, "the same closed interval"),
    ("[-2,5)", "(-2,5]", F, "the intervals differ at both endpoints (-2 and 5)"),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)", T, "the same union of intervals"),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2]\\cup(3,\\infty)", F, "the second contains 2, the first does not"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}", T, "sets are unordered"),
    ("\\{-1, 1\\}", "\\{1\\}", F, "-1 is missing"),
    ("3, 5", "5, 3", T, "MATH's 'all solutions, separated by commas' is a set"),
    ("3, 5", "3", F, "a solution is missing"),
    ("(3,-1)", "(3, -1)", T, "the same ordered pair (identical tuples, lm-eval bug #4030)"),
    ("(3,-1)", "(-1,3)", F, "an ordered pair's order matters"),
    ("(1,2)", "(1,2)", T, "identical strings"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", T, "the same vector"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", F, "components swapped"),
    ("\\text{Evelyn}", "Evelyn", T, "the same name, \\text{} is typesetting"),
    ("\\text{Monday}", "\\text{Tuesday}", F, "different days"),
    ("\\text{(C)}", "C", T, "the same multiple-choice letter"),
    ("\\frac{a}{b}", "a/b", T, "the same quotient of symbols"),
]


@pytest.mark.parametrize("gold,pred,ok,why", MATH_PAIRS, ids=[f"{i}-{p[3][:30]}" for i, p in enumerate(MATH_PAIRS)])
def test_math_answers_are_checked_by_math_verify(gold, pred, ok, why):
    assert check_answer(pred, gold).correct is ok, why
    assert check_answer(gold, pred).correct is ok, why  # equivalence is symmetric


def test_the_table_is_large_and_balanced():
    assert len(MATH_PAIRS) >= 30
    assert sum(1 for p in MATH_PAIRS if not p[2]) >= 12  # non-equivalent pairs too, not only matches


# (gold, a model's answer, equal as integers?, why) for AIME (0-999) and GSM8k ("#### n")
INTEGER_PAIRS = [
    ("33", "033", T, "AIME writes three digits: 033 is 33"),
    ("204", "204", T, "identical"),
    ("33", "34", F, "different integers"),
    ("1234", "1,234", T, "GSM8k answers use thousands separators"),
    ("18", "18.0", T, "18.0 is the integer 18"),
    ("18", "18.5", F, "18.5 is not an integer, let alone 18"),
    ("7", "x = 7", T, "the solution x = 7 is the integer 7"),
    ("-5", "5", F, "opposite signs"),
    ("72", "\\$72", T, "a dollar amount of 72"),
    ("5", "\\frac{10}{2}", F, "integer tasks want an integer written as one; a fraction is refused, not evaluated"),
    ("1234", "1{,}234", T, "the thousands separator as LaTeX sets it, {,}"),
    ("18", "18\\text{ dollars}", T, "GSM8k: 18 dollars is the number 18 with its unit"),
    ("25", "25 \\mbox{ cm}", T, "a length of 25 with its unit"),
    ("25", "26\\text{ cm}", F, "a different number with the same unit"),
    ("23", "2\\text{ or }3", F, "two answers joined by words: not the integer 23"),
    ("56", "5\\mbox{ apples and }6", F, "words between two numbers are not a unit"),
    # a review against math-verify (which lighteval's AIME task uses) found these scored wrong
    ("33", "m+n=33", T, "AIME's 'find m+n': what the last = sets"),
    ("33", "a + b + c = 33", T, "a sum set equal to the answer"),
    ("33", "m + n\n= 33", T, "an equation broken over two lines"),
    ("5", "x \\le 5", F, "an inequality is not the integer 5"),
    ("5", "x <= 5", F, "<= is not an assignment"),
    ("5", "x == 5", F, "== is not an assignment"),
    ("-5", "\u22125", T, "the typeset minus sign U+2212"),
    ("18", "18 \\mathrm{~dollars}", T, "a unit in \\mathrm"),
    ("18", "18\\,\\text{m}^2", T, "a squared unit"),
    ("25", "25\\text{ cm}^{3}", T, "a cubed unit"),
    ("7", "7 apples", T, "GSM8k: a number and the word for what it counts"),
    ("18", "18 \\text{ dollars}.", T, "a unit and the sentence's period"),
    ("3", "2 or 3", F, "two answers joined by a word: not the integer 3"),
]


def test_an_integer_of_any_length_is_compared():
    """A review: a model stuck on digits until it closed the box (4,301 digits) stopped the evaluation
    with Python's int() limit; the integers are compared as digit strings."""
    many = "1" * 5000
    assert check_answer(many, "33", "integer") == Verdict(False, "integer")
    assert check_answer("0" + many, many + ".0", "integer") == Verdict(True, "integer")
    assert check_answer("-" + many, many, "integer") == Verdict(False, "integer")
    assert check_answer("-0", "0", "integer") == Verdict(True, "integer")
    assert majority_vote([many, "33", "033"], "integer") == "33"


@pytest.mark.parametrize("gold,pred,ok,why", INTEGER_PAIRS)
def test_integer_tasks_compare_integers(gold, pred, ok, why):
    v = check_answer(pred, gold, "integer")
    assert v.correct is ok, why
    assert v.how in ("integer", "not an integer")


def test_builtin_lists_compare_integers_in_order():
    assert check_answer("12, 7, 30", "12,7,30", "integers").correct
    assert not check_answer("7, 12, 30", "12, 7, 30", "integers").correct  # answers to questions 1, 2, 3 in order
    assert not check_answer("12, 7", "12, 7, 30", "integers").correct
    assert not check_answer("12, seven, 30", "12, 7, 30", "integers").correct


def test_identical_strings_are_correct_without_parsing(monkeypatch):
    monkeypatch.setattr(answers._CHECKER, "check", lambda *a: pytest.fail("parsed an answer equal to its gold"))
    assert check_answer("(1, 2] \\cup \\{5\\}", "(1,2]\\cup\\{5\\}") == answers.Verdict(True, "string")


def test_no_answer_is_never_correct():
    assert check_answer(None, "3") == answers.Verdict(False, "no answer")
    assert check_answer("  ", "3").correct is False
    assert check_answer("$ $", "$ $").correct is False


def test_a_check_past_its_time_bound_is_stopped_and_incorrect():
    # sympy evaluates this power tower as an exact integer: one C call, for far longer than any bound,
    # that holds the interpreter (a thread watching it from the same process could never give up)
    start = time.monotonic()
    assert check_answer("9^{9^{9^{9}}}", "2", timeout=1.0) == answers.Verdict(False, "timeout")
    assert time.monotonic() - start < 30  # bounded: the check's process was killed at its bound
    assert check_answer("\\frac{1}{2}", "0.5") == answers.Verdict(True, "math-verify")  # a new process checks on


def test_a_checker_process_that_ends_is_replaced():
    assert check_answer("\\frac{2}{4}", "0.5").correct
    proc = answers._CHECKER._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    assert check_answer("\\frac{3}{4}", "0.75") == answers.Verdict(True, "math-verify")


def test_a_checker_exception_is_an_incorrect_verdict(monkeypatch):
    # the child's side, in this process: an exception of math-verify is its reply, and it serves on
    from hogwild_ref import mathcheck

    def broken(gold, pred):
        if gold == "boom":
            raise ZeroDivisionError
        return gold == pred

    monkeypatch.setattr(mathcheck, "verify", broken)
    monkeypatch.setattr(mathcheck, "_limit_cpu", lambda seconds: None)
    out = io.StringIO()
    mathcheck.serve(io.StringIO('{"gold": "boom", "pred": "1"}\n{"gold": "2", "pred": "2"}\n'), out)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"ready": True}, {"error": "ZeroDivisionError"}, {"ok": True}]


def test_checking_works_outside_the_main_thread():
    # math-verify's own SIGALRM timeouts raise outside the main thread; ours must not
    out = []
    t = threading.Thread(target=lambda: out.append(check_answer("\\dfrac{6}{8}", "0.75")))
    t.start()
    t.join()
    assert out == [answers.Verdict(True, "math-verify")]


def test_boxed_answers_are_extracted_then_checked():
    text = "First \\boxed{2}. On reflection the area is $\\boxed{\\dfrac{\\sqrt{3}}{4}}$."
    assert check_answer(extract_answer(text), "\\frac{\\sqrt 3}{4}").correct
    assert not check_answer(extract_answer("\\boxed{2}"), "\\frac{\\sqrt 3}{4}").correct


def test_majority_vote_counts_equivalent_forms_together():
    # 0.5, \frac{1}{2} and 1/2 are one answer (3 votes) against 2 votes for 3
    assert majority_vote(["3", "0.5", "\\frac{1}{2}", "3", "1/2"]) == "0.5"
    assert majority_vote(["033", "33", "34"], "integer") == "033"


def test_majority_vote_counts_the_same_text_as_one_answer_of_any_kind():
    # identical answers that are not integers are still one answer: 1/2 has 2 votes against 5's one
    assert majority_vote(["5", "\\frac{1}{2}", "\\frac{1}{2}"], "integer") == "\\frac{1}{2}"
    assert majority_vote(["7", "x", "x", "x"], "integers") == "x"


def test_the_checker_version_is_that_of_the_installed_package():
    import importlib.metadata

    assert checker_version() == importlib.metadata.version("math-verify")


def test_an_interrupted_check_never_answers_a_later_one(monkeypatch):
    """Found in review: Ctrl-C between a request and its reply left the reply in the pipe, and every later
    check read the reply of the one before it (1/2 = 0.5 false, 1/2 = 7 true)."""
    import types

    from hogwild_ref import mathcheck

    checker = mathcheck.Checker()
    try:
        assert checker.check("\\frac{1}{2}", "0.5", 30.0) is True

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(mathcheck, "select", types.SimpleNamespace(select=interrupted))
        with pytest.raises(KeyboardInterrupt):
            checker.check("\\frac{1}{2}", "7", 30.0)
        monkeypatch.undo()
        assert checker.check("\\frac{1}{2}", "0.5", 30.0) is True
        assert checker.check("\\frac{1}{2}", "7", 30.0) is False
    finally:
        checker.close()
