"""Special functions: eager forwards, forward rules and reverse rules of the ``PYTHON_RULE``
primitives ``OP_ERFC ERFINV NDTRI GAMMALN DIGAMMA LOG_NDTR LOGIT XLOGY XLOG1PY BETALN``.

Their rows in ``_primitives.PRIMITIVES`` point here; ``tapediff.special`` records them.  The
Python driver (``Tape._python_value`` / ``Tape._python_rule``) runs the rules on whole
records, so they add no branch (and no compile time) to the jitted sweeps.

Values: when SciPy is importable (looked up on first use, never required), every forward is
``scipy.special``'s own ufunc, so values equal SciPy's exactly, in float32 and float64;
otherwise the kernels below, which follow SciPy's algorithms (Cephes/Boost digamma,
the Faddeeva formula for ``log_ndtr``, SciPy's ``logit``), call the C library (``gammaln`` is
``lgamma``, ``erfc`` is ``erfc``: more accurate than SciPy's near lgamma's zeros and in
erfc's far tail) or refine a cheap approximation to full precision (``erfinv``, ``ndtri``:
Giles' approximation or an asymptotic guess, then Newton/Halley steps on ``erf``/``log
erfc``); ``betaln`` is a difference of ``gammaln`` terms.  They are ``numba.vectorize``
kernels compiled on first use (and cached), computing in float64 (float32 inputs are
rounded back).  ``tests/test_special.py`` checks them against SciPy over wide ranges.
Derivatives are NumPy expressions of the inputs and the output, with PyTorch's conventions at
the edges (``xlogy``'s gradient at x = 0, ``logit`` outside [0, 1]); ``digamma``'s needs
``trigamma`` and ``log_ndtr``'s the ratio phi/Phi, both kernels here (phi/Phi through erfcx,
without the cancellation of exp(-x**2/2 - log_ndtr(x)) for very negative x).

This module imports only NumPy, Numba and math: the storage layer may read it.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from numba import njit, vectorize

_jit = njit(cache=True, nogil=True, error_model="numpy")

_F64 = np.dtype(np.float64)
_SQRT2 = math.sqrt(2.0)
_SQRT1_2 = math.sqrt(0.5)
_SQRT_PI = math.sqrt(math.pi)
_2_SQRT_PI = 2.0 / math.sqrt(math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_EPS = 2.220446049250313e-16

# ---------------------------------------------------------------------------------------------
# SciPy, when installed
# ---------------------------------------------------------------------------------------------
#: ``scipy.special`` once looked up (False: not yet; None: not installed).  Tests set it to
#: None to run the kernels below.
_scipy: Any = False


def scipy_special() -> Any:
    """``scipy.special``, or None when SciPy is not installed (looked up once)."""
    global _scipy
    if _scipy is False:
        try:
            import scipy.special as sp
        except ImportError:
            sp = None
        _scipy = sp
    return _scipy


# ---------------------------------------------------------------------------------------------
# scalar kernels (float64)
# ---------------------------------------------------------------------------------------------
@_jit
def _polevl(x, coef):
    """Horner's rule, highest degree first (Cephes' ``polevl``)."""
    ans = coef[0]
    for i in range(1, len(coef)):
        ans = ans * x + coef[i]
    return ans


@_jit
def _lgamma(x):
    return math.lgamma(x)


# digamma: Cephes' psi as SciPy runs it (asymptotic series above 10, recurrence into [1, 2],
# Boost's rational approximation there around the positive root, reflection below 0), and
# SciPy's Taylor series around the root near -0.504, whose coefficients zeta(n + 1, root)
# are computed once below.
_EULER = 0.577215664901532860606512090082402431
_NEGROOT = -0.504083008264455409
_NEGROOTVAL = 7.2897639029768949e-17
_PSI_A = np.array([8.33333333333333333333E-2, -2.10927960927960927961E-2,
                   7.57575757575757575758E-3, -4.16666666666666666667E-3,
                   3.96825396825396825397E-3, -8.33333333333333333333E-3,
                   8.33333333333333333333E-2])
_PSI_Y = float(np.float32(0.99558162689208984))
_PSI_ROOT1 = 1569415565.0 / 1073741824.0
_PSI_ROOT2 = (381566830.0 / 1073741824.0) / 1073741824.0
_PSI_ROOT3 = 0.9016312093258695918615325266959189453125e-19
_PSI_P = np.array([-0.0020713321167745952, -0.045251321448739056, -0.28919126444774784,
                   -0.65031853770896507, -0.32555031186804491, 0.25479851061131551])
_PSI_Q = np.array([-0.55789841321675513e-6, 0.0021284987017821144, 0.054151797245674225,
                   0.43593529692665969, 1.4606242909763515, 2.0767117023730469, 1.0])
# Bernoulli numbers B_2 .. B_20 (Euler-Maclaurin tail of the Hurwitz zeta function)
_BERNOULLI = (1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730, 7 / 6, -3617 / 510,
              43867 / 798, -174611 / 330)


def _hurwitz_zeta(s: int, q: float) -> float:
    """zeta(s, q) = sum over k >= 0 of (k + q)**-s, for an integer s >= 2 (Euler-Maclaurin
    after 12 terms)."""
    n = 12
    head = math.fsum((k + q) ** -s for k in range(n))
    a = n + q
    tail = [a ** (1 - s) / (s - 1), 0.5 * a ** -s]
    poch, fact = float(s), 2.0  # (s)_(2j-1) and (2j)!
    for j, b in enumerate(_BERNOULLI, 1):
        tail.append(b / fact * poch * a ** (-s - 2 * j + 1))
        poch *= (s + 2 * j - 1) * (s + 2 * j)
        fact *= (2 * j + 1) * (2 * j + 2)
    return head + math.fsum(tail)


_NEGROOT_ZETA = np.array([0.0] + [_hurwitz_zeta(n + 1, _NEGROOT) for n in range(1, 100)])


@_jit
def _digamma(x):
    if x != x or x == math.inf:
        return x
    if x == -math.inf:
        return math.nan
    if abs(x - _NEGROOT) < 0.3:  # Taylor series around the negative root
        res = _NEGROOTVAL
        coeff = -1.0
        z = x - _NEGROOT
        for n in range(1, 100):
            coeff *= -z
            term = coeff * _NEGROOT_ZETA[n]
            res += term
            if abs(term) < _EPS * abs(res):
                break
        return res
    if x == 0.0:
        return math.copysign(math.inf, -x)
    y = 0.0
    if x < 0.0:  # reflection, the argument of tan reduced first
        r = x - np.trunc(x)
        if r == 0.0:
            return math.nan
        y = -math.pi / math.tan(math.pi * r)
        x = 1.0 - x
    if x <= 10.0 and x == np.floor(x):
        for i in range(1, int(x)):
            y += 1.0 / i
        return y - _EULER
    if x < 1.0:
        y -= 1.0 / x
        x += 1.0
    elif x < 10.0:
        while x > 2.0:
            x -= 1.0
            y += 1.0 / x
    if 1.0 <= x <= 2.0:
        g = x - _PSI_ROOT1
        g -= _PSI_ROOT2
        g -= _PSI_ROOT3
        r = _polevl(x - 1.0, _PSI_P) / _polevl(x - 1.0, _PSI_Q)
        return y + (g * _PSI_Y + g * r)
    a = 0.0
    if x < 1.0e17:
        z = 1.0 / (x * x)
        a = z * _polevl(z, _PSI_A)
    return y + (math.log(x) - 0.5 / x - a)


@_jit
def _trigamma_pos(x):
    """psi'(x) for x > 0: recurrence up to 12, then the asymptotic series."""
    s = 0.0
    while x < 12.0:
        s += 1.0 / (x * x)
        x += 1.0
    z = 1.0 / (x * x)
    p = 1 / 6 - z * (1 / 30 - z * (1 / 42 - z * (1 / 30 - z * (5 / 66 - z * (
        691 / 2730 - z * (7 / 6))))))
    return s + (1.0 / x + 0.5 * z + z / x * p)


@_jit
def _trigamma(x):
    if x != x or x == -math.inf:
        return math.nan
    if x <= 0.0:
        if x == np.floor(x):
            return math.inf  # poles
        s = math.sin(math.pi * (x - np.rint(x)))  # reflection: pi^2 / sin^2(pi x)
        return math.pi * math.pi / (s * s) - _trigamma_pos(1.0 - x)
    return _trigamma_pos(x)


@_jit
def _erfc(x):
    return math.erfc(x)


@_jit
def _exp_sq(x, s):
    """exp(s x**2) for s = +-1 or +-1/2 and |x| < 1e150, without the rounding of x**2 in
    the exponent: x split into 26-bit halves (Veltkamp), so s hi**2 is exact."""
    c = x * 134217729.0  # 2**27 + 1
    hi = c - (c - x)
    lo = x - hi
    return math.exp(s * (hi * hi)) * math.exp(s * ((2.0 * hi + lo) * lo))


@_jit
def _erfcx(u):
    """exp(u**2) * erfc(u) for u >= 0 (exp(u**2) without the rounding of u**2; beyond 26,
    where erfc underflows, its asymptotic series)."""
    if u < 26.0:
        return math.erfc(u) * _exp_sq(u, 1.0)
    z = 0.5 / (u * u)
    s = 1.0
    term = 1.0
    for k in range(1, 12):
        term *= -(2 * k - 1) * z
        s += term
    return s / (u * _SQRT_PI)


@_jit
def _log_ndtr(x):
    """log Phi(x): SciPy's formula, log(erfcx(-t)/2) - t*t below -1, log1p(-erfc(t)/2)
    above, with t = x/sqrt(2); below -1 log(erfc(-t)/2) itself while erfc does not
    underflow."""
    t = x * _SQRT1_2
    if x < -1.0:
        u = -t
        if u < 26.0:
            return math.log(0.5 * math.erfc(u))
        return math.log(0.5 * _erfcx(u)) - u * u
    return math.log1p(-0.5 * math.erfc(t))


@_jit
def _dlog_ndtr(x):
    """d/dx log Phi(x) = phi(x) / Phi(x) = sqrt(2/pi) / erfcx(-x/sqrt(2))."""
    if x < -1.0:
        return _SQRT_2_OVER_PI / _erfcx(-x * _SQRT1_2)
    if x > 40.0:
        return 0.0  # phi underflows
    return _exp_sq(x, -0.5) / (_SQRT_2PI * 0.5 * math.erfc(-x * _SQRT1_2))


@_jit
def _erfinv_guess(x, w):
    """Giles' single-precision erfinv (2010), w = -log((1 - x)(1 + x)): relative error ~1e-7
    while w < 16 (the caller refines it)."""
    if w < 5.0:
        w = w - 2.5
        p = 2.81022636e-08
        p = 3.43273939e-07 + p * w
        p = -3.5233877e-06 + p * w
        p = -4.39150654e-06 + p * w
        p = 0.00021858087 + p * w
        p = -0.00125372503 + p * w
        p = -0.00417768164 + p * w
        p = 0.246640727 + p * w
        p = 1.50140941 + p * w
    else:
        w = math.sqrt(w) - 3.0
        p = -0.000200214257
        p = 0.000100950558 + p * w
        p = 0.00134934322 + p * w
        p = -0.00367342844 + p * w
        p = 0.00573950773 + p * w
        p = -0.0076224613 + p * w
        p = 0.00943887047 + p * w
        p = 1.00167406 + p * w
        p = 2.83297682 + p * w
    return p * x


@_jit
def _erfinv_small(x):
    """erfinv(x) for |x| <= 0.5: Halley steps on erf(y) - x."""
    y = _erfinv_guess(x, -math.log((1.0 - x) * (1.0 + x)))
    for _ in range(4):
        d = (math.erf(y) - x) / (_2_SQRT_PI * math.exp(-y * y))
        step = d / (1.0 + y * d)
        y -= step
        if abs(step) <= 1e-9 * abs(y):  # cubic convergence: the step taken was enough
            break
    return y


@_jit
def _log_erfc(y):
    if y < 26.0:
        return math.log(math.erfc(y))
    return math.log(_erfcx(y)) - y * y


@_jit
def _erfcinv_small(t):
    """y > 0 with erfc(y) = t, for 0 < t <= 0.5: Newton steps on log erfc(y) - log t (exact
    residuals down to the smallest t; erfc(y) = t is never formed as 1 - erf(y))."""
    w = -math.log(t * (2.0 - t))
    if w < 16.0:
        y = _erfinv_guess(1.0 - t, w)
    else:  # erfc(y) ~ exp(-y^2) / (y sqrt(pi))
        lt = -math.log(t)
        y = math.sqrt(lt)
        for _ in range(3):
            y = math.sqrt(lt - math.log(y * _SQRT_PI))
    lt = math.log(t)
    for _ in range(10):
        step = (_log_erfc(y) - lt) * _erfcx(y) / _2_SQRT_PI  # f / -f'
        y += step
        if abs(step) <= 1e-10 * y:  # quadratic convergence: the step taken was enough
            break
    return y


@_jit
def _erfinv(x):
    a = abs(x)
    if a <= 0.5:
        return _erfinv_small(x)
    if a < 1.0:
        return math.copysign(_erfcinv_small(1.0 - a), x)  # 1 - a is exact
    if a == 1.0:
        return math.copysign(math.inf, x)
    return math.nan


@_jit
def _ndtri(p):
    if not (p > 0.0 and p < 1.0):
        if p == 0.0:
            return -math.inf
        if p == 1.0:
            return math.inf
        return math.nan
    if p < 0.25:
        return -_SQRT2 * _erfcinv_small(2.0 * p)
    if p <= 0.75:
        return _SQRT2 * _erfinv_small(2.0 * p - 1.0)  # 2p - 1 is exact here
    return _SQRT2 * _erfcinv_small(2.0 * (1.0 - p))  # and 1 - p here


# ufunc bodies (numba.vectorize compiles Python functions; the maths is in the kernels above)
def _u_gammaln(x):
    return _lgamma(x)


def _u_digamma(x):
    return _digamma(x)


def _u_trigamma(x):
    return _trigamma(x)


def _u_erfc(x):
    return _erfc(x)


def _u_erfcx(x):
    return _erfcx(x)


def _u_erfinv(x):
    return _erfinv(x)


def _u_ndtri(x):
    return _ndtri(x)


def _u_log_ndtr(x):
    return _log_ndtr(x)


def _u_dlog_ndtr(x):
    return _dlog_ndtr(x)


_BODIES: dict[str, Callable] = {
    "gammaln": _u_gammaln, "digamma": _u_digamma, "trigamma": _u_trigamma, "erfc": _u_erfc,
    "erfcx": _u_erfcx, "erfinv": _u_erfinv, "ndtri": _u_ndtri, "log_ndtr": _u_log_ndtr,
    "dlog_ndtr": _u_dlog_ndtr,
}
_UFUNCS: dict[str, Any] = {}


def own(name: str, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The kernel ``name`` (a key of ``_BODIES``) applied to ``x``, as a ufunc compiled on
    first use; float32 in, float32 out (computed in float64).  Poles and points outside the
    domain give inf/nan without a warning, as SciPy's."""
    uf = _UFUNCS.get(name)
    if uf is None:
        uf = _UFUNCS[name] = vectorize(["float64(float64)"], cache=True)(_BODIES[name])
    with np.errstate(all="ignore"):
        if out is not None:
            return uf(x, out=out)
        r = np.asarray(uf(x))
    return r.astype(x.dtype) if np.asarray(x).dtype == np.float32 else r


# ---------------------------------------------------------------------------------------------
# eager forwards: fn(x[, y], out=None), SciPy's ufunc or the kernels / NumPy formulas here
# ---------------------------------------------------------------------------------------------
def _scipy_or_own(name: str) -> Callable[..., np.ndarray]:
    def fn(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        sp = scipy_special()
        if sp is not None:
            return getattr(sp, name)(x, out=out)
        return own(name, x, out)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"``scipy.special.{name}`` if SciPy is installed, else tapediff's kernel."
    return fn


erfc = _scipy_or_own("erfc")
erfinv = _scipy_or_own("erfinv")
ndtri = _scipy_or_own("ndtri")
gammaln = _scipy_or_own("gammaln")
digamma = _scipy_or_own("digamma")
log_ndtr = _scipy_or_own("log_ndtr")


def _into(r: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return r
    np.copyto(out, r, casting="same_kind")
    return out


def logit_np(x: np.ndarray) -> np.ndarray:
    """SciPy's logit in NumPy: log(x / (1 - x)), and log1p(2(x - 1/2)) - log1p(-2(x - 1/2))
    in [0.3, 0.65] where the ratio would lose the digits of x - 1/2; in x's dtype."""
    x = np.asarray(x)
    with np.errstate(all="ignore"):
        s = 2 * (x - 0.5)
        mid = np.log1p(s) - np.log1p(-s)
        return np.asarray(np.where((x < 0.3) | (x > 0.65), np.log(x / (1 - x)), mid), x.dtype)


def xlogy_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x * log(y), 0 where x == 0 and y is not nan (SciPy's convention)."""
    with np.errstate(all="ignore"):
        r = np.multiply(x, np.log(y))
        return np.asarray(np.where((x == 0) & ~np.isnan(y), np.zeros((), r.dtype), r))


def xlog1py_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x * log1p(y), 0 where x == 0 and y is not nan (SciPy's convention)."""
    with np.errstate(all="ignore"):
        r = np.multiply(x, np.log1p(y))
        return np.asarray(np.where((x == 0) & ~np.isnan(y), np.zeros((), r.dtype), r))


def betaln_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gammaln(a) + gammaln(b) - gammaln(a + b), in float64 (the terms cancel), in the
    operands' dtype.  SciPy's own ``betaln`` does the same beyond a + b > 171; below it takes
    the log of a ratio of gamma functions, so this is within ~1e-15 of the magnitude of the
    gammaln terms (and nan where SciPy resolves inf - inf at the poles)."""
    dt = np.result_type(a, b)
    a, b = _f64(np.asarray(a)), _f64(np.asarray(b))
    with np.errstate(all="ignore"):
        return np.asarray(own("gammaln", a) + own("gammaln", b) - own("gammaln", a + b), dt)


def betaln(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``scipy.special.betaln`` if SciPy is installed, else ``betaln_np``."""
    sp = scipy_special()
    return sp.betaln(a, b, out=out) if sp is not None else _into(betaln_np(a, b), out)


def logit(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``scipy.special.logit`` if SciPy is installed, else ``logit_np``."""
    sp = scipy_special()
    return sp.logit(x, out=out) if sp is not None else _into(logit_np(x), out)


def xlogy(x: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``scipy.special.xlogy`` if SciPy is installed, else ``xlogy_np``."""
    sp = scipy_special()
    return sp.xlogy(x, y, out=out) if sp is not None else _into(xlogy_np(x, y), out)


def xlog1py(x: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``scipy.special.xlog1py`` if SciPy is installed, else ``xlog1py_np``."""
    sp = scipy_special()
    return sp.xlog1py(x, y, out=out) if sp is not None else _into(xlog1py_np(x, y), out)


# ---------------------------------------------------------------------------------------------
# the rules (see ``_primitives.Primitive.forward``): forward(out, *inputs, param) and
# reverse(g, out, *inputs, param, needs) -> one adjoint (or None) per input
# ---------------------------------------------------------------------------------------------
def _f64(a: np.ndarray) -> np.ndarray:
    return a.astype(_F64, copy=False)


def _exp_sq_np(x: np.ndarray, s: float) -> np.ndarray:
    """exp(s x**2) (s = +-1, +-1/2) without the rounding of x**2 in the exponent, whose
    relative error would grow as x**2 (``_exp_sq`` in NumPy)."""
    x = _f64(x)
    with np.errstate(all="ignore"):
        c = x * 134217729.0
        hi = c - (c - x)
        lo = x - hi
        split = np.exp(s * (hi * hi)) * np.exp(s * ((2 * hi + lo) * lo))
        return np.where(np.abs(x) < 1e150, split, np.exp(s * np.square(x)))


def _unary_forward(fn: Callable) -> Callable:
    def forward(out: np.ndarray, x: np.ndarray, c: float) -> None:
        fn(x, out=out)
    forward.__name__ = forward.__qualname__ = f"fwd_{fn.__name__}"
    return forward


def _binary_forward(fn: Callable) -> Callable:
    def forward(out: np.ndarray, x: np.ndarray, y: np.ndarray, c: float) -> None:
        fn(x, y, out=out)
    forward.__name__ = forward.__qualname__ = f"fwd_{fn.__name__}"
    return forward


fwd_erfc = _unary_forward(erfc)
fwd_erfinv = _unary_forward(erfinv)
fwd_ndtri = _unary_forward(ndtri)
fwd_gammaln = _unary_forward(gammaln)
fwd_digamma = _unary_forward(digamma)
fwd_log_ndtr = _unary_forward(log_ndtr)
fwd_logit = _unary_forward(logit)
fwd_xlogy = _binary_forward(xlogy)
fwd_xlog1py = _binary_forward(xlog1py)
fwd_betaln = _binary_forward(betaln)


def adj_erfc(g: np.ndarray, out: np.ndarray, x: np.ndarray, c: float, needs: tuple) -> tuple:
    """-2/sqrt(pi) e^(-x^2)."""
    return (g * (-_2_SQRT_PI * _exp_sq_np(x, -1.0)),)


def adj_erfinv(g: np.ndarray, out: np.ndarray, x: np.ndarray, c: float, needs: tuple) -> tuple:
    """sqrt(pi)/2 e^(y^2), y = erfinv(x)."""
    return (g * (0.5 * _SQRT_PI * _exp_sq_np(out, 1.0)),)


def adj_ndtri(g: np.ndarray, out: np.ndarray, x: np.ndarray, c: float, needs: tuple) -> tuple:
    """sqrt(2 pi) e^(y^2/2), y = ndtri(p)."""
    return (g * (_SQRT_2PI * _exp_sq_np(out, 0.5)),)


def adj_gammaln(g: np.ndarray, out: np.ndarray, x: np.ndarray, c: float, needs: tuple) -> tuple:
    """digamma(x)."""
    return (g * digamma(_f64(x)),)


def adj_digamma(g: np.ndarray, out: np.ndarray, x: np.ndarray, c: float, needs: tuple) -> tuple:
    """trigamma(x) (inf at the poles)."""
    return (g * own("trigamma", _f64(x)),)


def adj_log_ndtr(g: np.ndarray, out: np.ndarray, x: np.ndarray, c: float,
                 needs: tuple) -> tuple:
    """phi(x) / Phi(x)."""
    return (g * own("dlog_ndtr", _f64(x)),)


def adj_logit(g: np.ndarray, out: np.ndarray, x: np.ndarray, c: float, needs: tuple) -> tuple:
    """1 / (x (1 - x)); nan outside [0, 1], as PyTorch's."""
    x = _f64(x)
    with np.errstate(all="ignore"):
        return (np.where((x < 0) | (x > 1), np.nan, g / (x * (1 - x))),)


def unbroadcast(a: Any, shape: tuple) -> Any:
    """``a`` summed down to ``shape``, the shape of an operand NumPy broadcast to a's (an
    array, or a tensor: the graph rules use it too)."""
    if not hasattr(a, "sum"):
        a = np.asarray(a)
    if a.shape == shape:
        return a
    if a.ndim > len(shape):
        a = a.sum(axis=tuple(range(a.ndim - len(shape))))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
    return (a.sum(axis=axes, keepdims=True) if axes else a).reshape(shape)


def adj_xlogy(g: np.ndarray, out: np.ndarray, x: np.ndarray, y: np.ndarray, c: float,
              needs: tuple) -> tuple:
    """(log y, x / y), PyTorch's: d/dx is xlogy(g, y), 0 where x == 0 and y <= 0."""
    x, y = _f64(x), _f64(y)
    with np.errstate(all="ignore"):
        dx = dy = None
        if needs[0]:
            dx = unbroadcast(np.where((x == 0) & (y <= 0), 0.0, xlogy_np(g, y)), x.shape)
        if needs[1]:
            dy = unbroadcast(g * x / y, y.shape)
    return dx, dy


def adj_xlog1py(g: np.ndarray, out: np.ndarray, x: np.ndarray, y: np.ndarray, c: float,
                needs: tuple) -> tuple:
    """(log1p y, x / (1 + y)), PyTorch's: d/dx is xlog1py(g, y), 0 where x == 0 and
    y <= -1."""
    x, y = _f64(x), _f64(y)
    with np.errstate(all="ignore"):
        dx = dy = None
        if needs[0]:
            dx = unbroadcast(np.where((x == 0) & (y <= -1), 0.0, xlog1py_np(g, y)), x.shape)
        if needs[1]:
            dy = unbroadcast(g * x / (1 + y), y.shape)
    return dx, dy


def adj_betaln(g: np.ndarray, out: np.ndarray, a: np.ndarray, b: np.ndarray, c: float,
               needs: tuple) -> tuple:
    """(digamma(a) - digamma(a + b), digamma(b) - digamma(a + b))."""
    a, b = _f64(a), _f64(b)
    with np.errstate(all="ignore"):
        dab = digamma(a + b)
        da = unbroadcast(g * (digamma(a) - dab), a.shape) if needs[0] else None
        db = unbroadcast(g * (digamma(b) - dab), b.shape) if needs[1] else None
    return da, db


# ---------------------------------------------------------------------------------------------
# higher-order rules (see ``_primitives.Primitive.tangent``): tangent(tout, out, inputs, tins,
# c) writes the derivative times the inputs' tangents; graph(T, g, out, inputs, c, needs) is
# the reverse rule in tensor operations (T: the tapediff namespace), which a backward can
# record and differentiate again.  digamma's derivative, trigamma, is not a tensor operation:
# its graph rule raises NotImplementedError (and so do gammaln's and betaln's one order up,
# through the digamma they record).
# ---------------------------------------------------------------------------------------------
def _unary_tangent(name: str, deriv: Callable) -> Callable:
    """The tangent rule of a unary primitive: ``deriv(x, y)`` (y its value) times dx."""
    def tangent(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list, c: float) -> None:
        with np.errstate(all="ignore"):
            tout[...] = deriv(_f64(inputs[0]), _f64(out)) * _f64(tins[0])
    tangent.__name__ = tangent.__qualname__ = f"tan_{name}"
    return tangent


tan_erfc = _unary_tangent("erfc", lambda x, y: -_2_SQRT_PI * _exp_sq_np(x, -1.0))
tan_erfinv = _unary_tangent("erfinv", lambda x, y: 0.5 * _SQRT_PI * _exp_sq_np(y, 1.0))
tan_ndtri = _unary_tangent("ndtri", lambda x, y: _SQRT_2PI * _exp_sq_np(y, 0.5))
tan_gammaln = _unary_tangent("gammaln", lambda x, y: digamma(x))
tan_digamma = _unary_tangent("digamma", lambda x, y: own("trigamma", x))
tan_log_ndtr = _unary_tangent("log_ndtr", lambda x, y: own("dlog_ndtr", x))
tan_logit = _unary_tangent("logit", lambda x, y: np.where((x < 0) | (x > 1), np.nan,
                                                          1 / (x * (1 - x))))


def tan_xlogy(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list, c: float) -> None:
    """xlogy(dx, y) (0 where x == 0 and y <= 0) + dy x / y: the reverse rule's transpose."""
    x, y = (_f64(v) for v in inputs)
    dx, dy = (_f64(t) for t in tins)
    with np.errstate(all="ignore"):
        tout[...] = np.where((x == 0) & (y <= 0), 0.0, xlogy_np(dx, y)) + dy * x / y


def tan_xlog1py(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list,
                c: float) -> None:
    """xlog1py(dx, y) (0 where x == 0 and y <= -1) + dy x / (1 + y)."""
    x, y = (_f64(v) for v in inputs)
    dx, dy = (_f64(t) for t in tins)
    with np.errstate(all="ignore"):
        tout[...] = np.where((x == 0) & (y <= -1), 0.0, xlog1py_np(dx, y)) + dy * x / (1 + y)


def tan_betaln(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list, c: float) -> None:
    """(digamma(a) - digamma(a + b)) da + (digamma(b) - digamma(a + b)) db."""
    a, b = (_f64(v) for v in inputs)
    da, db = (_f64(t) for t in tins)
    with np.errstate(all="ignore"):
        dab = digamma(a + b)
        tout[...] = (digamma(a) - dab) * da + (digamma(b) - dab) * db


def _value(t: Any) -> np.ndarray:
    """A tensor's values, read without recording anything (for masks)."""
    return t.detach().numpy()


def graph_erfc(T: Any, g: Any, out: Any, inputs: list, c: float, needs: tuple) -> tuple:
    """-2/sqrt(pi) e^(-x^2)."""
    x = inputs[0]
    return (g * (T.exp(-(x * x)) * -_2_SQRT_PI),)


def graph_erfinv(T: Any, g: Any, out: Any, inputs: list, c: float, needs: tuple) -> tuple:
    """sqrt(pi)/2 e^(y^2), y = erfinv(x) (the recorded output)."""
    return (g * (T.exp(out * out) * (0.5 * _SQRT_PI)),)


def graph_ndtri(T: Any, g: Any, out: Any, inputs: list, c: float, needs: tuple) -> tuple:
    """sqrt(2 pi) e^(y^2/2), y = ndtri(p) (the recorded output)."""
    return (g * (T.exp(0.5 * (out * out)) * _SQRT_2PI),)


def graph_gammaln(T: Any, g: Any, out: Any, inputs: list, c: float, needs: tuple) -> tuple:
    """digamma(x), recorded (its own derivative is trigamma)."""
    return (g * T.special.digamma(inputs[0]),)


def graph_digamma(T: Any, g: Any, out: Any, inputs: list, c: float, needs: tuple) -> tuple:
    """trigamma(x), which is not a tensor operation: raises NotImplementedError."""
    if not needs[0]:
        return (None,)
    raise NotImplementedError(
        "digamma: a higher derivative of digamma is not available (its derivative, trigamma, "
        "is not a differentiable operation in tapediff)")


def graph_log_ndtr(T: Any, g: Any, out: Any, inputs: list, c: float, needs: tuple) -> tuple:
    """phi(x) / Phi(x) = e^(-x^2/2 - log_ndtr(x)) / sqrt(2 pi), with the recorded output
    (far in the left tail the exponent cancels: a relative error of about x^2 ulps, where
    the reverse rule's erfcx formula has none)."""
    x = inputs[0]
    return (g * (T.exp(-0.5 * (x * x) - out) * (1.0 / _SQRT_2PI)),)


def graph_logit(T: Any, g: Any, out: Any, inputs: list, c: float, needs: tuple) -> tuple:
    """1 / (x (1 - x)); nan outside [0, 1]."""
    x = inputs[0]
    xv = _value(x)
    with np.errstate(all="ignore"):
        return (T.where((xv < 0) | (xv > 1), np.nan, g / (x * (1 - x))),)


def graph_xlogy(T: Any, g: Any, out: Any, inputs: list, c: float, needs: tuple) -> tuple:
    """(xlogy(g, y), 0 where x == 0 and y <= 0; g x / y), summed to the operands' shapes."""
    x, y = inputs
    dx = dy = None
    with np.errstate(all="ignore"):
        if needs[0]:
            xv, yv = _value(x), _value(y)
            dx = T.where((xv == 0) & (yv <= 0), 0.0, T.special.xlogy(g, y))
            dx = unbroadcast(dx, x.shape)
        if needs[1]:
            dy = unbroadcast(g * x / y, y.shape)
    return dx, dy


def graph_xlog1py(T: Any, g: Any, out: Any, inputs: list, c: float, needs: tuple) -> tuple:
    """(xlog1py(g, y), 0 where x == 0 and y <= -1; g x / (1 + y)), summed to the operands'
    shapes."""
    x, y = inputs
    dx = dy = None
    with np.errstate(all="ignore"):
        if needs[0]:
            xv, yv = _value(x), _value(y)
            dx = T.where((xv == 0) & (yv <= -1), 0.0, T.special.xlog1py(g, y))
            dx = unbroadcast(dx, x.shape)
        if needs[1]:
            dy = unbroadcast(g * x / (1 + y), y.shape)
    return dx, dy


def graph_betaln(T: Any, g: Any, out: Any, inputs: list, c: float, needs: tuple) -> tuple:
    """(digamma(a) - digamma(a + b), digamma(b) - digamma(a + b)), recorded."""
    a, b = inputs
    dab = T.special.digamma(a + b)
    da = unbroadcast(g * (T.special.digamma(a) - dab), a.shape) if needs[0] else None
    db = unbroadcast(g * (T.special.digamma(b) - dab), b.shape) if needs[1] else None
    return da, db
