"""Special functions: ``td.special`` / ``td.gammaln`` & co., and ``scipy.special`` on tensors.

* values: equal to SciPy's (its ufuncs are the forwards when it is installed), float64 and
  float32; tapediff's own kernels (used without SciPy) against SciPy over wide ranges;
* gradients: against central differences over each function's domain (hypothesis), and
  against ``torch.special`` where PyTorch is installed, including the conventions at the
  edges (xlogy at x = 0, logit outside [0, 1], poles);
* ``scipy.special`` ufuncs called on tensors record and differentiate;
* replay re-runs every record's forward rule: values and gradients at new inputs are exact;
* without SciPy (hidden from a child process) everything works on the own kernels.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapediff as td
from tapediff._src import _kernels as K
from tapediff._src import _special_rules as R

from helpers import check_grad

sp = pytest.importorskip("scipy.special")

UNARY = ["erf", "erfc", "erfinv", "gammaln", "digamma", "expit", "logit", "log_ndtr", "ndtr",
         "ndtri"]
BINARY = ["xlogy", "xlog1py", "betaln"]
#: where each function is tested: values, and gradients by finite differences
DOMAIN = {
    "erf": [(-3.0, 3.0)], "erfc": [(-4.0, 6.0)], "erfinv": [(-0.95, 0.95)],
    "gammaln": [(0.1, 12.0), (-2.9, -2.1)], "digamma": [(0.2, 12.0), (-1.8, -1.2)],
    "expit": [(-8.0, 8.0)], "logit": [(0.03, 0.97)], "log_ndtr": [(-25.0, 6.0)],
    "ndtr": [(-6.0, 6.0)], "ndtri": [(0.02, 0.98)],
    "xlogy": [(-2.0, 2.0)], "xlog1py": [(-2.0, 2.0)], "betaln": [(0.2, 8.0)],
}
SECOND = {"xlogy": [(0.2, 3.0)], "xlog1py": [(-0.8, 2.0)], "betaln": [(0.2, 8.0)]}
#: the primitive each records (the composed ones: their last record)
OPCODE = {"erfc": K.OP_ERFC, "erfinv": K.OP_ERFINV, "ndtri": K.OP_NDTRI,
          "gammaln": K.OP_GAMMALN, "digamma": K.OP_DIGAMMA, "log_ndtr": K.OP_LOG_NDTR,
          "logit": K.OP_LOGIT, "xlogy": K.OP_XLOGY, "xlog1py": K.OP_XLOG1PY,
          "betaln": K.OP_BETALN}
#: grad_fn names, PyTorch's
GRAD_FN = {"erfc": "Erfc", "erfinv": "Erfinv", "ndtri": "SpecialNdtri", "gammaln": "Lgamma",
           "digamma": "Digamma", "log_ndtr": "SpecialLogNdtr", "logit": "Logit",
           "xlogy": "Xlogy", "xlog1py": "SpecialXlog1py", "expit": "Sigmoid", "erf": "Erf",
           "betaln": "Betaln"}


def _sample(intervals: list, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(lo, hi, n) for lo, hi in intervals])


def _args(name: str, n: int = 200, seed: int = 0) -> list[np.ndarray]:
    a = _sample(DOMAIN[name], n, seed)
    if name in BINARY:
        return [a, _sample(SECOND[name], n, seed + 1)[:a.size]]
    return [a]


# ---------------------------------------------------------------------------------------------
# values: SciPy's (its ufuncs are the forwards)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", UNARY + BINARY)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_values_are_scipys(name, dtype):
    args = [a.astype(dtype) for a in _args(name, 500)]
    for rg in (False, True):  # a constant, and a recorded value in the tape's arena
        y = getattr(td, name)(*[td.tensor(a, requires_grad=rg) for a in args])
        assert isinstance(y, td.Tensor) and y.dtype == dtype and y.shape == args[0].shape
        expected = getattr(sp, name)(*args)
        if name in ("expit", "erf"):  # td.sigmoid and td.erf: tapediff's own formulas
            tol = dict(rtol=2e-15, atol=1e-15) if dtype == np.float64 else dict(rtol=1e-6)
            np.testing.assert_allclose(y.numpy(), expected, **tol)
        else:
            np.testing.assert_array_equal(y.numpy(), expected)
        assert getattr(td.special, name)(*args).numpy().tobytes() == \
            getattr(td, name)(*args).numpy().tobytes()
    if name in GRAD_FN:
        assert y.grad_fn == f"<{GRAD_FN[name]}Backward0>"


def test_public_names_docstrings_and_example():
    import doctest
    import typing

    for name in td.special.__all__:
        fn = getattr(td.special, name)
        assert fn.__doc__ and "scipy.special" in fn.__doc__ or name == "erf", name
        if name != "psi":
            assert getattr(td, name) is fn and name in td.__all__, name
        if name != "erf":  # td.erf is the table's
            assert typing.get_type_hints(fn)["return"] is td.Tensor, name
    assert td.special.psi is td.special.digamma
    assert doctest.testmod(td.special).failed == 0


def test_edge_values_are_scipys():
    x = np.array([-np.inf, -3.0, -1.0, -0.0, 0.0, 1e-300, 0.5, 1.0, 2.0, 30.0, np.inf, np.nan])
    with np.errstate(all="ignore"):
        for name in UNARY:
            check = np.testing.assert_allclose if name in ("erf", "expit") else \
                np.testing.assert_array_equal
            check(getattr(td, name)(x).numpy(), getattr(sp, name)(x), err_msg=name)
        for name in BINARY:
            np.testing.assert_array_equal(getattr(td, name)(x[:, None], x).numpy(),
                                          getattr(sp, name)(x[:, None], x), err_msg=name)


def test_ints_become_float64_and_python_numbers_stay_weak():
    assert td.gammaln([1, 2, 3]).dtype == np.float64
    assert td.ndtr(np.arange(3)).dtype == np.float64
    assert td.xlogy(np.arange(3), 2).dtype == np.float64
    x32 = td.tensor(np.float32([0.5, 2.0]), requires_grad=True)
    for y in (td.xlogy(x32, 2.5), td.xlog1py(2.5, x32), td.betaln(x32, 2.5), td.ndtr(x32)):
        assert y.dtype == np.float32
        y.sum().backward()
        assert x32.grad.dtype == np.float32
    assert td.xlogy(x32, np.float64(2.5)).dtype == np.float64  # NumPy scalars are strong


# ---------------------------------------------------------------------------------------------
# tapediff's own kernels (the forwards without SciPy) against SciPy, over wide ranges
# ---------------------------------------------------------------------------------------------
def _close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float = 0.0) -> None:
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


WIDE = {
    "gammaln": [(-60.0, 60.0), (0.0, 3.0), (1e3, 1e300)],
    "digamma": [(-60.0, 60.0), (-1.0, 3.0), (1e3, 1e300), (R._NEGROOT - 1e-4, R._NEGROOT + 1e-4),
                (1.4616321449683622 - 1e-6, 1.4616321449683622 + 1e-6)],
    "erfc": [(-10.0, 26.5)],
    "erfinv": [(-1.0, 1.0), (-1e-6, 1e-6)],
    "ndtri": [(0.0, 1.0), (0.5 - 1e-6, 0.5 + 1e-6)],
    "log_ndtr": [(-60.0, 38.0), (-1e8, -1.0), (-3.0, 3.0)],
}
# the own kernels agree with SciPy to a few ulps, except where SciPy itself is off by more:
# gammaln near its zeros at 1 and 2 (SciPy's relative error there reaches 1e-11: an absolute
# tolerance), erfc and log_ndtr beyond x ~ 10 (SciPy's exp(-x^2) carries the rounding of x^2:
# relative error ~ x^2 eps, where math.erfc is correctly rounded)
WIDE_TOL = {"gammaln": dict(rtol=4e-15, atol=1e-15), "digamma": dict(rtol=2e-15, atol=1e-30),
            "erfc": dict(rtol=1e-13), "erfinv": dict(rtol=2e-15), "ndtri": dict(rtol=2e-15),
            "log_ndtr": dict(rtol=1e-13)}


@pytest.mark.parametrize("name", sorted(WIDE))
def test_own_kernels_match_scipy_over_wide_ranges(name):
    x = _sample(WIDE[name], 20000, 3)
    x = np.concatenate([x, np.logspace(-300, 2, 2000), -np.logspace(-300, 2, 2000),
                        1 - np.logspace(-16, 0, 500), np.arange(-5.0, 6.0)])
    with np.errstate(all="ignore"):
        want = getattr(sp, name)(x)
    normal = ~(np.abs(want) < 2.3e-308)  # SciPy flushes erfc's subnormal results to 0
    _close(R.own(name, x)[normal], want[normal], **WIDE_TOL[name])


def test_own_kernels_of_derivatives_match_scipy():
    x = np.concatenate([_sample([(-40.0, 40.0), (0.0, 3.0)], 5000, 4), np.logspace(-5, 5, 300)])
    _close(R.own("trigamma", x), sp.polygamma(1, x), rtol=4e-15)  # polygamma: zeta(2, x)
    u = np.concatenate([_sample([(0.0, 40.0)], 5000, 5), np.logspace(-3, 8, 300)])
    _close(R.own("erfcx", u), sp.erfcx(u), rtol=2e-15)
    x = np.concatenate([_sample([(-60.0, 40.0)], 5000, 6), -np.logspace(0, 8, 300)])
    t = -x * math.sqrt(0.5)
    with np.errstate(all="ignore"):  # phi/Phi = sqrt(2/pi) / erfcx(-x/sqrt(2))
        want = np.where(x < -1, math.sqrt(2 / math.pi) / sp.erfcx(t),
                        np.exp(-x * x / 2) / math.sqrt(2 * math.pi) / sp.ndtr(x))
    _close(R.own("dlog_ndtr", x), want, rtol=1e-13, atol=1e-300)


def test_own_numpy_formulas_match_scipy():
    x = np.concatenate([_sample([(0.0, 1.0)], 20000, 7), np.logspace(-300, 0, 500),
                        0.5 + np.logspace(-17, -1, 500), [0.0, 1.0, -1.0, 2.0, np.nan]])
    _close(R.logit_np(x), sp.logit(x), rtol=4e-16)  # NumPy's log and log1p: 1 ulp
    _close(R.logit_np(x.astype(np.float32)), sp.logit(x.astype(np.float32)), rtol=2e-7)
    a = np.array([0.0, -0.0, 1.5, 0.0, 0.0, 2.0, 0.0, 0.0])[:, None]
    b = np.array([0.0, -1.0, 2.5, np.inf, np.nan, -2.0, 1e-300, -0.5])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(R.xlogy_np(a, b), sp.xlogy(a, b))
        np.testing.assert_array_equal(R.xlog1py_np(a, b), sp.xlog1py(a, b))


def test_own_kernels_keep_float32_and_shapes():
    for name in ("gammaln", "digamma", "erfc", "erfinv", "ndtri", "log_ndtr"):
        x = np.float32([[0.25, 0.5], [0.75, 0.125]])
        y = R.own(name, x)
        assert y.dtype == np.float32 and y.shape == (2, 2)
        np.testing.assert_allclose(y, getattr(sp, name)(x.astype(np.float64)), rtol=1e-7)
        assert R.own(name, np.empty(0)).shape == (0,)
        out = np.empty((), np.float32)
        assert R.own(name, np.float32(0.5), out=out) is out


# ---------------------------------------------------------------------------------------------
# gradients: central differences (hypothesis) and PyTorch
# ---------------------------------------------------------------------------------------------
def _elements(intervals: list) -> st.SearchStrategy:
    return st.one_of(*(st.floats(lo, hi) for lo, hi in intervals))


@pytest.mark.parametrize("name", UNARY)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_unary_gradients_match_finite_differences(name, data):
    x = data.draw(hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=3),
                             elements=_elements(DOMAIN[name])))
    check_grad(getattr(td, name), [x], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", BINARY)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_binary_gradients_match_finite_differences(name, data):
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2,
                                                         max_side=3)).input_shapes
    x = data.draw(hnp.arrays(np.float64, shapes[0], elements=_elements(DOMAIN[name])))
    y = data.draw(hnp.arrays(np.float64, shapes[1], elements=_elements(SECOND[name])))
    rg = data.draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    check_grad(getattr(td, name), [x, y], requires_grad=rg, rtol=2e-5, atol=1e-6)


def test_float32_gradients_are_float32_and_match_float64():
    for name in UNARY + BINARY:
        args = _args(name, 50)
        grads = []
        for dt in (np.float64, np.float32):
            xs = [td.tensor(a.astype(dt), requires_grad=True) for a in args]
            y = getattr(td, name)(*xs)
            assert y.dtype == dt
            y.sum().backward()
            assert all(x.grad.dtype == dt for x in xs)
            grads.append([x.grad.numpy() for x in xs])
        for g64, g32 in zip(*grads):
            np.testing.assert_allclose(g32, g64, rtol=2e-5, atol=1e-6, err_msg=name)


# the gradients PyTorch gives (tapediff's are closer to the exact values in places: trigamma,
# log_ndtr's far left tail, logit near 1/2, ndtr's tails, so the tolerances are PyTorch's
# errors there)
TORCH_TOL = {"digamma": 1e-9, "gammaln": 1e-12, "log_ndtr": 1e-12, "logit": 1e-12,
             "ndtr": 1e-12}


@pytest.mark.parametrize("name", UNARY + ["xlogy", "xlog1py"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_values_and_gradients_match_pytorch(name, dtype):
    torch = pytest.importorskip("torch")
    args = [a.astype(dtype) for a in _args(name, 300, 9)]
    if name in ("xlogy", "xlog1py"):
        args[0][:50] = 0.0  # x == 0: the value 0 and PyTorch's gradient there
    w = np.random.default_rng(1).standard_normal(args[0].shape).astype(dtype)
    xs = [td.tensor(a, requires_grad=True) for a in args]
    y = getattr(td, name)(*xs)
    (y * w).sum().backward()
    ts = [torch.tensor(a, requires_grad=True) for a in args]
    yt = getattr(torch.special, name)(*ts)
    (yt * torch.tensor(w)).sum().backward()
    if dtype == np.float64:
        rtol = TORCH_TOL.get(name, 2e-14)
        atol = 1e-13 if name == "ndtr" else 1e-300  # PyTorch's 1 + erf(x) in the left tail
    else:
        rtol, atol = 1e-4, 1e-6
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=rtol, atol=atol)
    for x, t in zip(xs, ts):
        assert x.grad.dtype == dtype
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=rtol, atol=atol)


def test_conventions_at_the_edges_are_pytorchs():
    torch = pytest.importorskip("torch")
    cases = {
        "xlogy": ([0.0, 0.0, 0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 2.0, np.inf, 0.0, 1e-300]),
        "xlog1py": ([0.0, 0.0, 0.0, 0.0, 1.0], [-1.0, -2.0, 2.0, np.inf, -1.0]),
        "logit": ([-0.5, 0.0, 0.25, 1.0, 1.5],),
        "digamma": ([0.0, 1e-300, -0.5, -2.5],),
        "gammaln": ([0.0, -1.0, 1.0, 2.0],),
        "erfinv": ([-1.0, 0.0, 1.0],),
        "ndtri": ([0.0, 0.5, 1.0],),
        "log_ndtr": ([-40.0, -5.0, 0.0, 40.0, np.inf],),
        "erfc": ([-np.inf, 0.0, 30.0, np.inf],),
    }
    for name, args in cases.items():
        xs = [td.tensor(np.array(a), requires_grad=True) for a in args]
        with np.errstate(all="ignore"):
            getattr(td, name)(*xs).sum().backward()
        ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in args]
        getattr(torch.special, name)(*ts).sum().backward()
        for x, t in zip(xs, ts):
            np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-9, atol=0,
                                       err_msg=name)
    # log_ndtr far in the left tail: phi/Phi ~ -x (PyTorch's exp(-x^2/2 - log_ndtr(x)) gives
    # inf at -1e10 and nan at -inf)
    x = td.tensor([-1e10, -1e200, -np.inf], requires_grad=True)
    td.log_ndtr(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1e10, 1e200, np.inf], rtol=1e-15)
    x = td.tensor([-1.0, -2.0], requires_grad=True)
    with np.errstate(all="ignore"):
        td.digamma(x).sum().backward()
    # trigamma's poles (PyTorch's reflection gives ~1e32 there; SciPy's polygamma inf)
    np.testing.assert_array_equal(x.grad.numpy(), sp.polygamma(1, [-1.0, -2.0]))


# ---------------------------------------------------------------------------------------------
# scipy.special on tensors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", UNARY + BINARY + ["psi"])
def test_scipy_ufuncs_on_tensors_record_and_differentiate(name):
    ref = getattr(td.special, name)
    args = _args("digamma" if name == "psi" else name, 20, 11)
    xs = [td.tensor(a, requires_grad=True) for a in args]
    with td.tape() as t:
        y = getattr(sp, name)(*xs)
        assert isinstance(y, td.Tensor) and len(t) > len(xs)
        y.sum().backward()
    zs = [td.tensor(a, requires_grad=True) for a in args]
    ref(*zs).sum().backward()
    check = np.testing.assert_allclose if name in ("erf", "expit") else \
        np.testing.assert_array_equal  # td.erf and td.sigmoid: tapediff's formulas
    check(y.numpy(), getattr(sp, name)(*args))
    for x, z in zip(xs, zs):
        np.testing.assert_array_equal(x.grad.numpy(), z.grad.numpy())
    if name in BINARY:  # an ndarray on either side
        for k in (0, 1):
            mixed = [args[0], args[1]]
            mixed[k] = td.tensor(args[k], requires_grad=True)
            r = getattr(sp, name)(*mixed)
            assert isinstance(r, td.Tensor)
            r.sum().backward()
            assert mixed[k].grad.shape == args[k].shape


def test_scipy_ufuncs_with_keywords_and_no_grad():
    x = td.tensor([0.5, 1.5], requires_grad=True)
    assert sp.gammaln(x, dtype=np.float32).dtype == np.float32
    with td.no_grad():
        y = sp.gammaln(x)
        assert not y.requires_grad
    with pytest.raises(TypeError, match="out="):
        sp.gammaln(x, out=np.empty(2))


# ---------------------------------------------------------------------------------------------
# replay: every record's forward rule
# ---------------------------------------------------------------------------------------------
def _everything(x, p, a):
    """All the functions, on x in (0.3, 0.7) (scaled into each domain) and p in (0, 1)."""
    s = td.special
    return (s.erf(x) + s.erfc(2 * x) + s.erfinv(x) + s.gammaln(3 * x) + s.digamma(x + 1)
            + s.expit(x) + s.logit(p) + s.xlogy(x, p) + s.xlog1py(p, x) + s.log_ndtr(-30 * x)
            + s.ndtr(x) + s.ndtri(p) + s.betaln(x, a) + sp.gammaln(x) * sp.xlogy(a, x)).sum()


def test_replay_follows_every_record():
    fg = td.value_and_grad(_everything, argnums=(0, 1), replay=True)
    eager = td.value_and_grad(_everything, argnums=(0, 1))
    rng = np.random.default_rng(12)
    a = rng.uniform(0.5, 2.0, 4)
    for k in range(4):
        x, p = rng.uniform(0.3, 0.7, 4), rng.uniform(0.05, 0.95, 4)
        value, (gx, gp) = fg(x, p, a)
        want, (wx, wp) = eager(x, p, a)
        assert value == want
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gp, wp)
    assert fg.recordings == 1 and fg.replays == 3


def test_forward_rules_recompute_the_recorded_values():
    with td.tape() as t:
        x = td.tensor(np.linspace(0.3, 0.7, 5), requires_grad=True)
        _everything(x, x * 0.5, np.full(5, 1.5))
    ops = t.op[:len(t)]
    assert set(OPCODE.values()) <= set(ops.tolist())
    recorded = [t.value_view(s, (int(t.n[s]),)).copy() for s in range(len(t))]
    for s in range(len(t)):
        if ops[s] in OPCODE.values():
            t.value_view(s, (int(t.n[s]),))[...] = np.nan
    assert t.forward() == -1
    for s in range(len(t)):
        np.testing.assert_array_equal(t.value_view(s, (int(t.n[s]),)), recorded[s])


# ---------------------------------------------------------------------------------------------
# without SciPy: the own kernels, and no import of SciPy at all
# ---------------------------------------------------------------------------------------------
def test_without_scipy_the_own_kernels_give_values_and_gradients(monkeypatch):
    monkeypatch.setattr(R, "_scipy", None)
    for name in UNARY + BINARY:
        for dt in (np.float64, np.float32):
            args = [a.astype(dt) for a in _args(name, 100, 13)]
            xs = [td.tensor(a, requires_grad=True) for a in args]
            y = getattr(td, name)(*xs)
            assert y.dtype == dt
            y.sum().backward()
            rtol = 1e-13 if dt == np.float64 else 1e-6
            atol = 1e-13 if name == "betaln" else 1e-15  # a difference of gammaln terms
            np.testing.assert_allclose(y.numpy(), getattr(sp, name)(*args), rtol=rtol,
                                       atol=atol, err_msg=name)
            assert all(x.grad.dtype == dt for x in xs)


_NO_SCIPY = """
import sys
sys.modules["scipy"] = None  # import scipy raises ImportError
import numpy as np, tapediff as td
x = td.tensor([0.25, 0.5, 2.0], requires_grad=True)
y = (td.gammaln(x) + td.digamma(x) + td.erfinv(x * 0.4) + td.ndtri(x * 0.25) + td.erfc(x)
     + td.log_ndtr(-x) + td.logit(x * 0.25) + td.xlogy(x, x) + td.betaln(x, 2.0)).sum()
y.backward()
assert "scipy.special" not in sys.modules
print(repr(float(y)), repr(x.grad.numpy().tolist()))
"""


def test_no_runtime_dependency_on_scipy():
    out = subprocess.run([sys.executable, "-c", _NO_SCIPY], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    value, grad = (eval(v) for v in out.stdout.split(" ", 1))  # noqa: S307
    x = td.tensor([0.25, 0.5, 2.0], requires_grad=True)
    y = (td.gammaln(x) + td.digamma(x) + td.erfinv(x * 0.4) + td.ndtri(x * 0.25) + td.erfc(x)
         + td.log_ndtr(-x) + td.logit(x * 0.25) + td.xlogy(x, x) + td.betaln(x, 2.0)).sum()
    y.backward()
    assert value == pytest.approx(float(y), rel=1e-14)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-13)
