"""NumPy's floating-point warnings raised inside an operation point at the caller's line,
say what NumPy says, and respect the caller's ``np.errstate``."""
import inspect
import warnings

import numpy as np
import pytest

import tapediff as td

X = np.array([-1.0, 0.0, 2.0])


def _caught(fn):
    """(message, filename, line) of each warning ``fn()`` raises, and its result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return [(str(w.message), w.filename, w.lineno) for w in caught], result


def _numpy_messages(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(*args)
    return sorted(str(w.message) for w in caught)


# each case: (tapediff computation, the NumPy computation whose warnings it must match)
CASES = {
    "log": (lambda x: td.log(x), lambda a: np.log(a)),
    "ufunc protocol": (lambda x: np.sqrt(x), lambda a: np.sqrt(a)),
    "divide": (lambda x: x / 0.0, lambda a: a / 0.0),
    "rdivide": (lambda x: 1.0 / x, lambda a: 1.0 / a),
    "power": (lambda x: x ** 1.5, lambda a: a ** 1.5),
    "rpower": (lambda x: 0.0 ** x, lambda a: 0.0 ** a),
    "arcsin": (lambda x: np.arcsin(2 * x), lambda a: np.arcsin(2 * a)),
    "exp": (lambda x: td.exp(1000 * x), lambda a: np.exp(1000 * a)),
    "tensor / tensor": (lambda x: x / (x * 0), lambda a: a / (a * 0)),
}


@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize("scalar", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_warnings_point_at_the_callers_line_with_numpys_message(case, scalar, requires_grad):
    ours, theirs = CASES[case]
    line = ours.__code__.co_firstlineno  # the caller's line is the case's
    warned = False
    for v in X if scalar else [X]:  # 0-d tensors take the scalar path
        x = td.tensor(v, requires_grad=requires_grad)
        got, y = _caught(lambda: ours(x))
        expected = _numpy_messages(theirs, np.asarray(v))
        warned = warned or bool(expected)
        assert sorted(m for m, _, _ in got) == expected
        assert {(f, n) for _, f, n in got} <= {(__file__, line)}
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(y.detach().numpy(), theirs(np.asarray(v)))
    assert warned, "the case must make NumPy warn"


def test_reductions_and_matmul_name_the_operation():
    big = td.tensor([1e308, 1e308], requires_grad=True)
    line = inspect.currentframe().f_lineno + 1
    got, _ = _caught(lambda: big.sum())
    assert got == [("overflow encountered in sum", __file__, line)]
    a = td.tensor([[1e308, 1e308]], requires_grad=True)
    line = inspect.currentframe().f_lineno + 1
    got, _ = _caught(lambda: a @ a.T)
    assert got == [("overflow encountered in matmul", __file__, line)]


def test_in_place_update_of_a_constant_warns_at_the_callers_line():
    c = td.tensor([1.0, 0.0])
    line = inspect.currentframe().f_lineno + 1
    got, _ = _caught(lambda: c.__itruediv__(0.0))
    assert sorted(got) == sorted([("divide by zero encountered in divide", __file__, line),
                                  ("invalid value encountered in divide", __file__, line)])


@pytest.mark.parametrize("scalar", [False, True])
def test_errstate_raise_and_ignore_are_respected(scalar):
    x = td.tensor(0.0 if scalar else [0.0, 1.0], requires_grad=True)
    with np.errstate(divide="raise"):
        with pytest.raises(FloatingPointError, match="divide by zero encountered in log"):
            td.log(x)
    with np.errstate(all="ignore"):
        got, y = _caught(lambda: td.log(x))
    assert got == []
    assert np.isneginf(np.asarray(y.detach().numpy()).ravel()[0])
    # one kind ignored, the other still warns (at this line)
    with np.errstate(divide="ignore"):
        line = inspect.currentframe().f_lineno + 1
        got, _ = _caught(lambda: td.log(x - 1.0))
    assert got == [("invalid value encountered in log", __file__, line)]


def test_a_users_own_error_callback_is_called():
    seen = []
    with np.errstate(divide="call", call=lambda kind, flag: seen.append(kind)):
        got, _ = _caught(lambda: td.log(td.tensor([0.0, 1.0], requires_grad=True)))
    assert seen == ["divide by zero"]
    assert got == []


def test_warnings_as_errors_raise_at_the_callers_line_and_leave_the_tape_usable():
    x = td.tensor([0.0, 1.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning, match="divide by zero encountered in log"):
            td.log(x)
    y = (x * x).sum()
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 2.0])


def test_no_warning_when_nothing_goes_wrong():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    got, y = _caught(lambda: td.log(x) / x)
    assert got == []
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), (1 - np.log([1.0, 2.0])) / np.array([1.0, 4.0]))
