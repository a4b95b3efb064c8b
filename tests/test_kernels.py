"""Every opcode has a branch in the reverse and forward sweeps, reached from the public API.

The sweep is a hand-written dispatch (see tapediff/_src/_kernels.py): this table names, for each
opcode, an expression that records it; the test checks the table covers every opcode, that
the expression really records that opcode, that its backward runs and matches finite
differences, and that the forward sweep recomputes the values it recorded.  An opcode added
without a rule or without a row here fails.

The rows of the public elementwise primitives (``td.exp`` ...) are derived from the table of
primitives (``tapediff._src._primitives.PUBLIC``), their input mapped into the row's domain; only
the operators, constants and structural opcodes have hand-written rows.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import tapediff as td
from tapediff._src import _kernels as K
from tapediff._src import _primitives as P
from tapediff._src import _tape
from tapediff._src._tape import BIG
from tapediff.testing import gradgradcheck

from helpers import check_grad, into_domain

X = np.array([[0.7, 1.3, 0.4], [1.1, 0.6, 0.9]])

SRC = 1.5  # the inputs recorded below (X, 0.9 * X, uniform(0.1, 0.9)) lie in (0, SRC)


def in_domain(domain: tuple):
    """A tensor x with values in (0, SRC), mapped strictly inside ``domain``."""
    return lambda x: into_domain(x * (1 / SRC), domain)


def _public_row(p: P.Primitive):
    """td.<name> of a public elementwise primitive, on x (and x[0]) mapped into its domain."""
    fn = getattr(td, p.name)
    to = [in_domain(d) for d in p.domain]
    if p.arity == 1:
        return lambda x: fn(to[0](x))
    return lambda x: fn(to[0](x), to[1](x[0]))


# opcode -> function of one tensor (values in (0, SRC)) that records it: the operators,
# constants and structural opcodes by hand, the public elementwise primitives from the table
_BY_HAND = {
    K.OP_LEAF: lambda x: x.reshape(-1),
    K.OP_CONST: lambda x: x * np.ones(3),
    K.OP_ADD: lambda x: x + x[0],
    K.OP_SUB: lambda x: x - x[0],
    K.OP_MUL: lambda x: x * x[0],
    K.OP_DIV: lambda x: x / x[0],
    K.OP_POW: lambda x: x ** x[0],
    K.OP_ADD_C: lambda x: x + 2.0,
    K.OP_MUL_C: lambda x: x * 3.0,
    K.OP_RSUB_C: lambda x: 2.0 - x,
    K.OP_DIV_C: lambda x: x / 3.0,
    K.OP_RDIV_C: lambda x: 3.0 / x,
    K.OP_POW_C: lambda x: x ** 3.0,
    K.OP_RPOW_C: lambda x: 3.0 ** x,
    K.OP_RESTRIDE: lambda x: x.T,
    K.OP_GATHER: lambda x: x[[1, 0, 1]],
    K.OP_SCATTER: lambda x: x.at[0, [0, 2, 0]].add(x[1]),
    K.OP_WHERE: lambda x: td.where(X > 0.8, x, x * 2.0),
    K.OP_CONCAT: lambda x: td.concatenate([x, x * 2.0, x[:, :1] ** 2], axis=1),
    K.OP_PROD: lambda x: x.prod(axis=1),
    K.OP_CUMSUM: lambda x: x.cumsum(axis=1),
    K.OP_CUMPROD: lambda x: x.cumprod(axis=0),
    K.OP_EXTREME: lambda x: x.max(axis=1) + x.min(axis=0).sum(),
    K.OP_CMP: lambda x: td.maximum(x, x[0]),
    K.OP_GUARD: lambda x: x * 2.0 if bool(x[0, 0] > 0.5) else x,  # on a replay recording
    K.OP_MATMUL: lambda x: x @ x.T,
    K.OP_CAST: lambda x: x.astype(np.float32).astype(np.float64),
    # linear algebra (tests/test_linalg.py tests them in depth): 2x2 SPD x @ x.T + I, the
    # 2x3 x itself; eigenvectors and singular vectors squared (their signs are arbitrary)
    K.OP_LINALG_SOLVE: lambda x: td.linalg.solve(x @ x.T + np.eye(2), x),
    K.OP_LINALG_SOLVE_TRIANGULAR: lambda x: td.linalg.solve_triangular(
        x[:, :2] + 2.0 * np.eye(2), x, lower=True),
    K.OP_LINALG_CHOLESKY: lambda x: td.linalg.cholesky(x @ x.T + np.eye(2)),
    K.OP_LINALG_SLOGDET: lambda x: td.linalg.slogdet(x @ x.T + np.eye(2))[1],
    K.OP_LINALG_EIGH: lambda x: td.concatenate(
        [td.linalg.eigh(x @ x.T)[0], td.linalg.eigh(x @ x.T)[1].ravel() ** 2]),
    K.OP_LINALG_SVD: lambda x: td.concatenate(
        [u.ravel() ** 2 for u in td.linalg.svd(x, full_matrices=False)]),
    K.OP_LINALG_QR: lambda x: td.concatenate([f.ravel() for f in td.linalg.qr(x.T)]),
    K.OP_LINALG_PINV: lambda x: td.linalg.pinv(x),
    # special functions (tests/test_special.py tests them in depth), x in (0.4, 1.3)
    K.OP_ERFC: lambda x: td.erfc(x),
    K.OP_ERFINV: lambda x: td.erfinv(x * 0.7),
    K.OP_NDTRI: lambda x: td.ndtri(x * 0.7),
    K.OP_GAMMALN: lambda x: td.gammaln(x),
    K.OP_DIGAMMA: lambda x: td.digamma(x),
    K.OP_LOG_NDTR: lambda x: td.log_ndtr(x * 3.0 - 3.0),
    K.OP_LOGIT: lambda x: td.logit(x * 0.7),
    K.OP_XLOGY: lambda x: td.xlogy(x, x[0]),
    K.OP_XLOG1PY: lambda x: td.xlog1py(x, x[0]),
    K.OP_BETALN: lambda x: td.betaln(x, x[0] + 0.5),
}
RECORDERS = {**_BY_HAND, **{p.op: _public_row(p) for p in P.PUBLIC}}


def test_every_opcode_has_a_row():
    assert set(RECORDERS) == set(range(K.NUM_OPCODES)), set(P.GRAD_FN) ^ set(RECORDERS)
    assert not set(_BY_HAND) & {p.op for p in P.PUBLIC}, "a public primitive written by hand"


@pytest.mark.parametrize("op", sorted(P.GRAD_FN), ids=lambda o: P.GRAD_FN[o])
def test_opcode_is_recorded_and_swept(op):
    fn = RECORDERS[op]
    with td.tape() as t:
        t._guards = []  # record as for replay (guards included)
        x = td.tensor(X, requires_grad=True)
        fn(x)
        assert op in set(t.op[:len(t)].tolist()), f"{P.GRAD_FN[op]} was not recorded"
    if op == K.OP_CAST:  # a float32 round trip: finite differences would see its rounding
        x = td.tensor(X, requires_grad=True)
        (fn(x) * 2.0).sum().backward()
        assert x.grad.dtype == np.float64
        np.testing.assert_array_equal(x.grad.numpy(), np.full(X.shape, 2.0))
        return
    check_grad(fn, [X.copy()])


@pytest.mark.parametrize("op", sorted(P.GRAD_FN), ids=lambda o: P.GRAD_FN[o])
def test_opcode_second_derivative(op):
    """Every primitive's reverse rule, recorded (create_graph) and differentiated again,
    against central differences of its first-order gradient."""
    fn = RECORDERS[op]
    if op == K.OP_DIGAMMA:  # its derivative (trigamma) is not an operation of tapediff
        with pytest.raises(NotImplementedError, match="higher derivative of digamma"):
            gradgradcheck(fn, [X.copy()])
        return
    if op == K.OP_CAST:  # float32 rounding of the weights: a looser comparison
        assert gradgradcheck(fn, [X.copy()], eps=1e-3, atol=1e-3, rtol=1e-3)
        return
    assert gradgradcheck(fn, [X.copy()])


def test_an_unknown_opcode_is_an_internal_error_not_a_wrong_gradient():
    with td.tape() as t:
        x = td.tensor(X, requires_grad=True)
        y = (x * 2.0).sum()
        t.op[y._slot - 1] = K.NUM_OPCODES  # corrupt the record of x * 2
        with pytest.raises(AssertionError, match="no rule"):
            y.backward()
    assert x.grad is None


@pytest.mark.parametrize("op", sorted(P.GRAD_FN), ids=lambda o: P.GRAD_FN[o])
def test_forward_sweep_recomputes_every_recorded_value(op):
    with td.tape() as t:
        t._guards = []
        x = td.tensor(X * 0.9, requires_grad=True)
        y = RECORDERS[op](x)
    top = len(t)
    recorded = [t.value_view(s, (int(t.n[s]),)).copy() for s in range(top)]
    computed = [s for s in range(top) if t.op[s] not in (K.OP_LEAF, K.OP_CONST)]
    for s in computed:  # forget every computed value
        t.value_view(s, (int(t.n[s]),))[...] = np.nan
    assert t.forward() == -1  # no guard fails at the same inputs
    for s in computed:
        np.testing.assert_allclose(t.value_view(s, (int(t.n[s]),)), recorded[s], rtol=1e-6,
                                   err_msg=f"record {s} ({P.GRAD_FN[int(t.op[s])]})")
    assert y is not None


def test_a_guard_fails_when_its_value_changes():
    with td.tape() as t:
        t._guards = []
        x = td.tensor(X, requires_grad=True)
        RECORDERS[K.OP_GUARD](x)
    leaf = x._leaf_record.slot
    assert t.forward() == -1
    t.value_view(leaf, X.shape)[...] = -X  # x[0, 0] > 0.5 no longer holds
    g = t.forward()
    assert t.op[g] == K.OP_GUARD and "comparison" in t._guards[int(t.param[g])]


@pytest.mark.parametrize("op", sorted(P.NUMPY_RULES), ids=lambda o: P.GRAD_FN[o])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_sweep_runs_large_transcendental_records_through_numpy(op, dtype):
    """At >= BIG elements the forward rule is NumPy's own loop: the exact eager value."""
    fn = RECORDERS[op]  # the row derived from the table: x0 mapped into the op's domain
    x0 = np.random.default_rng(op).uniform(0.1, 0.9, BIG + 3).astype(dtype)
    with td.tape() as t:
        x = td.tensor(x0, requires_grad=True)
        y = fn(x)
    s = y._slot
    assert t.op[s] == op
    expected = t.value_view(s, y.shape).copy()
    t.value_view(s, y.shape)[...] = np.nan
    assert t.forward(s) == -1  # from s: its input keeps the value recorded (float32 included)
    np.testing.assert_array_equal(t.value_view(s, y.shape), expected)


NUMPY_ADJOINTS = [op for op in sorted(P.GRAD_FN) if K.TRAITS[op] & K.NUMPY_ADJOINT]


def test_numpy_adjoints_are_the_transcendental_unary_rules():
    """Which rules the reverse sweep hands to NumPy on large records (a change is deliberate)."""
    assert {P.GRAD_FN[op] for op in NUMPY_ADJOINTS} == {"Sinh", "Cosh", "Softplus", "Erf"}


@pytest.mark.parametrize("op", NUMPY_ADJOINTS, ids=lambda o: P.GRAD_FN[o])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reverse_sweep_runs_large_transcendental_adjoints_through_numpy(op, dtype, monkeypatch):
    """At >= BIG elements the adjoint is the rule's Python form on arrays (NumPy's SIMD exp
    and cosh): the compiled rule's gradient up to last-bit rounding, in the input's dtype,
    accumulated with the other uses of the input (first touch assigns, later ones add)."""
    fn = RECORDERS[op]
    x0 = np.random.default_rng(op).uniform(0.1, 0.9, BIG + 3).astype(dtype)
    c = td.tensor(x0)

    def grads():
        x = td.tensor(x0, requires_grad=True)
        with td.tape() as t:
            y = fn(x)
            loss = (y * y).sum() + (fn(x) * c).sum() + (fn(c) * x).sum()
        assert t.op[y._slot] == op
        loss.backward()
        return x.grad.numpy()

    calls = []
    numpy_adjoint = _tape.Tape._numpy_adjoint
    monkeypatch.setattr(_tape.Tape, "_numpy_adjoint",
                        lambda t, i, touched: calls.append(i) or numpy_adjoint(t, i, touched))
    handed = grads()
    assert len(calls) == 2  # the two fn(x) (fn(c) of a constant is not recorded)
    monkeypatch.setattr(_tape, "BIG", 1 << 62)  # the compiled rule, element by element
    compiled = grads()
    assert len(calls) == 2
    assert handed.dtype == dtype
    if dtype == np.float64:
        np.testing.assert_allclose(handed, compiled, rtol=1e-13)
    else:  # NumPy's float32 loops against the compiled rule's float64 arithmetic
        np.testing.assert_allclose(handed, compiled, rtol=1e-5,
                                   atol=1e-6 * float(np.abs(compiled).max()))


@pytest.mark.parametrize("p", [p for p in P.PRIMITIVES if p.domain and p.array is not None],
                         ids=lambda p: p.grad_fn)
def test_every_domain_lies_where_the_forward_is_finite(p):
    """Tests draw inputs anywhere in a row's domain (its intervals, ends included): the row's
    eager NumPy forward must be finite there, without a floating-point warning, and so must
    the gradient the primitive records."""
    grids = [np.concatenate([np.linspace(lo, hi, 33) for lo, hi in d]) for d in p.domain]
    points = [g.ravel() for g in np.meshgrid(*grids, indexing="ij")]
    with np.errstate(all="raise"):
        value = p.array(*points)
    assert np.isfinite(value).all()
    # td.<name> for the public primitives; the operators' NumPy ufuncs dispatch to them
    fn = getattr(td, p.name) if p in P.PUBLIC else p.array
    xs = [td.tensor(a, requires_grad=True) for a in points]
    with np.errstate(all="raise"):
        y = fn(*xs)
        assert isinstance(y, td.Tensor) and y.grad_fn == f"<{p.grad_fn}Backward0>"
        y.sum().backward()
    for x in xs:
        assert np.isfinite(x.grad.numpy()).all()


# ---------------------------------------------------------------------------------------------
# LATE_RULE records: handed back by the reverse sweep, run by reverse_late
# ---------------------------------------------------------------------------------------------
def _late_chain(x, c):
    """max/min/prod reductions and both scans between elementwise records, a late record
    reading a leaf, one reading a constant, and one input read by two late records."""
    y = td.sin(x) * 1.5
    m = td.max(y, axis=1)  # (4,)
    s = td.cumsum(y, axis=0) * td.min(x * x, axis=0)  # (4, 3) * (3,)
    p = td.prod(x[:, :2] + 2.0, axis=1)  # (4,)
    q = td.cumprod(td.exp(x[0] * 0.1)) + td.max(c) + td.cumsum(c)[:3]  # c: a constant
    return (m * p)[:, None] + td.exp(s * 0.1) + td.cos(q)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_late_rules_in_the_middle_of_a_sweep(dtype):
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, (4, 3)).astype(dtype)
    c0 = rng.uniform(-1, 1, 5).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float64 else dict(rtol=2e-2, atol=2e-3)
    check_grad(lambda x, c: _late_chain(x, c), [x0, c0], requires_grad=[True, False], **tol)


def test_late_rules_in_replay_and_jacobians_match_backward():
    rng = np.random.default_rng(4)
    c = td.tensor(rng.uniform(-1, 1, 5))
    f = lambda x: _late_chain(x, c).sum()  # noqa: E731
    g = td.grad(f, replay=True)
    for _ in range(3):  # records, then replays (reverse_all in the compiled driver)
        x0 = rng.uniform(-1, 1, (4, 3))
        x = td.tensor(x0, requires_grad=True)
        f(x).backward()
        np.testing.assert_allclose(g(x0), x.grad.numpy(), rtol=1e-12, atol=1e-14)
    assert g.replays >= 1
    jac = td.jacrev(lambda x: _late_chain(x, c))(x0)  # rows of the Jacobian: reverse_rows
    np.testing.assert_allclose(jac.reshape(12, 12).sum(axis=0), g(x0).ravel(), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1",
                    reason="with the JIT off nothing is compiled")
def test_a_first_backward_without_late_rules_does_not_compile_them():
    code = ("import numpy as np, tapediff as td\n"
            "from tapediff._src import _kernels as K\n"
            "a = np.array([1.0, 2.0, 3.0])\n"
            "x = td.tensor(a, requires_grad=True)\n"
            "(td.sin(x) * x + x / 2 - 1).sum().backward()\n"
            "assert K.reverse_sweep.signatures and not K.reverse_late.signatures\n"
            "td.max(x * x).backward()\n"
            "assert K.reverse_late.signatures\n"
            "expected = np.sin(a) + a * np.cos(a) + 0.5 + np.array([0.0, 0.0, 6.0])\n"
            "np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-14)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_compiled_drivers_pass_the_sweeps_no_constant_argument():
    # Numba specialises a jitted callee on a constant argument (Literal[int]): a sweep called
    # with one from a compiled driver would compile a second time (~5 s of a first replay)
    import ast
    import inspect

    sweeps = {"forward_sweep", "reverse_sweep", "reverse_all", "tangent_sweep", "fused_group"}
    tree = ast.parse(inspect.getsource(K))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id in sweeps]
    assert len(calls) >= 4
    for call in calls:
        for arg in call.args:
            constant = all(isinstance(n, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator,
                                          ast.unaryop)) for n in ast.walk(arg))
            assert not constant, (call.func.id, call.lineno, ast.unparse(arg))
