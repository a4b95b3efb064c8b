"""Tests of ``tapediff.testing``: ``gradcheck`` and the Hypothesis strategies.

gradcheck must accept correct gradients (scalar and non-scalar outputs, broadcasting,
several inputs, float32), reject wrong ones with a message that locates the mismatch, and
leave the caller's tensors alone.  The wrong gradients are built from correct operations
and ``detach()``: the value is right, the taped gradient is not, so only the comparison
with finite differences can notice.

The strategies must produce what they promise (shapes that broadcast, tensors of the asked
dtype, programs that stay finite and within their bounds, whose source is what runs), and
every op in the program table, and random programs over all of them, must pass gradcheck.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapediff as td
from tapediff._src import _primitives as P
from tapediff.testing import GRADCHECK_DEFAULTS, GradcheckError, gradcheck
from tapediff.testing import strategies as tst

# Per-op tests run once per row of the table: a third of the profile's examples each.
PER_OP = settings(max_examples=max(5, settings.default.max_examples // 3))


@pytest.fixture(autouse=True)
def _clean_grad_mode():
    """gradcheck toggles grad mode internally: every test must leave it on and no tape open."""
    default = td.current_tape()
    yield
    assert td.is_grad_enabled(), "grad mode was left disabled"
    assert td.current_tape() is default, "a tape block was left open"


def _t(values, dtype=np.float64, requires_grad=True) -> td.Tensor:
    return td.tensor(np.asarray(values, dtype=dtype), requires_grad=requires_grad)


X3 = [0.5, -1.25, 2.0]
M23 = [[0.3, -0.7, 1.1], [1.9, 0.2, -1.4]]

# (id, fn, inputs); inputs are rebuilt per test so no case sees another's .grad
CORRECT = [
    ("scalar-out", lambda x: (td.exp(x) * x).sum(), lambda: [_t(X3)]),
    ("0-d", lambda x: td.sin(x) * x ** 3, lambda: [_t(0.7)]),
    ("elementwise-out", lambda x: td.tanh(x) / (x * x + 1.0), lambda: [_t(X3)]),
    ("broadcast-2x3-with-3", lambda x, y: x * y + td.sigmoid(x - y),
     lambda: [_t(M23), _t(X3)]),
    ("broadcast-2x1-with-3", lambda x, y: (x * x + 1.0) ** y,
     lambda: [_t([[0.5], [-1.5]]), _t(X3)]),
    ("broadcast-0d", lambda x, s: x / s, lambda: [_t(M23), _t(1.7)]),
    ("reductions", lambda x: x.sum(axis=0) * x.mean(axis=1, keepdims=True),
     lambda: [_t(M23)]),
    ("slicing", lambda x: x[:, ::-1] * x[:1, None, :], lambda: [_t(M23)]),
    ("log-sqrt", lambda x: td.log(x * x + 1.0) + td.sqrt(x * x + 2.0), lambda: [_t(X3)]),
    ("reused-input", lambda x: x * x.sum() - x / (x * x + 1.0), lambda: [_t(X3)]),
    ("tuple-out", lambda x, y: (x * y, td.cos(x).sum()), lambda: [_t(X3), _t(0.4)]),
    # a tensor that does not require grad and a Python number are passed through unchecked
    ("constants", lambda x, c, k: x * c + k, lambda: [_t(X3), _t(X3, requires_grad=False), 2.5]),
    ("ndarray-input", lambda x: (x * x).sum(), lambda: [np.array(X3)]),
    ("float32", lambda x, y: td.exp(x) * y, lambda: [_t(X3, np.float32), _t(M23, np.float32)]),
    ("float32-scalar-out", lambda x: (td.sin(x) * x).sum(), lambda: [_t(M23, np.float32)]),
    ("unused-input", lambda x, y: x * 2.0, lambda: [_t(X3), _t(X3)]),
]


@pytest.mark.parametrize("fn, make", [c[1:] for c in CORRECT], ids=[c[0] for c in CORRECT])
def test_gradcheck_accepts_correct_gradients(fn, make):
    assert gradcheck(fn, make()) is True
    assert gradcheck(fn, make(), raise_exception=False) is True


def test_gradcheck_accepts_a_single_tensor_and_works_inside_no_grad():
    x = _t(X3)
    with td.no_grad():  # the analytical side turns grad mode back on for itself
        assert gradcheck(lambda x: td.exp(x), x)
        assert not td.is_grad_enabled()


def test_gradcheck_inside_a_tape_block():
    x = _t(X3)
    with td.tape():
        assert gradcheck(lambda x: (x * td.sin(x)).sum(), [x])


# Functions whose value is right but whose taped gradient is not.
WRONG = [
    # d/dx (x * x) is 2x; the tape sees only one factor
    ("x.detach()*x", lambda x: x.detach() * x),
    ("(x*x.detach()).sum()", lambda x: (x * x.detach()).sum()),
    # value x, taped gradient 1.01: a 1% error is caught at the float64 tolerances
    ("1%-off", lambda x: x + 0.01 * (x - x.detach())),
    # value x, taped Jacobian the reversal: every column sums to 1, as the identity's does,
    # so a plain sum() reduction would pass it; random projections do not
    ("routed-reversed", lambda x: x + (x[::-1] - x[::-1].detach()) - (x - x.detach())),
    # the output does not require grad at all: the analytical gradient is zero
    ("fully-detached", lambda x: x.detach() * 2.0),
]


@pytest.mark.parametrize("fn", [c[1] for c in WRONG], ids=[c[0] for c in WRONG])
def test_gradcheck_rejects_wrong_gradients(fn):
    x = _t(X3)
    assert gradcheck(fn, x, raise_exception=False) is False
    with pytest.raises(GradcheckError) as info:
        gradcheck(fn, x)
    err = info.value
    assert isinstance(err, RuntimeError)
    msg = str(err)
    assert msg.startswith("Jacobian mismatch for output 0")
    assert "with respect to input 0" in msg
    assert err.input_index == 0 and err.output_index == 0
    assert f"element {err.element}" in msg
    assert repr(err.analytical) in msg and repr(err.numerical) in msg
    assert "numerical:" in msg and "analytical:" in msg
    assert abs(err.analytical - err.numerical) > 1e-5 + 1e-3 * abs(err.numerical)


def test_gradcheck_error_reports_the_values_of_the_worst_element():
    # scalar output: analytical d/dx_k = x_k, numerical 2 x_k; the worst element is the
    # largest |x_k| (the tolerance grows only with rtol * |numerical|)
    x = _t([0.5, -3.0, 1.0])
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x: (x * x.detach()).sum(), x)
    err = info.value
    assert err.projection is None  # one-element output: no projection
    assert err.element == (1,)
    assert err.analytical == -3.0
    assert err.numerical == pytest.approx(-6.0, rel=1e-8)
    assert "worst at element (1,): analytical -3.0, numerical -6.0" in str(err)


def test_gradcheck_names_the_input_and_output_that_fail():
    x, y = _t(X3), _t(M23)
    # output 1's gradient with respect to input 1 is wrong; output 0 is right
    fn = lambda x, y: (x * y, (y * y.detach()).sum() + x.sum())  # noqa: E731
    with pytest.raises(GradcheckError) as info:
        gradcheck(fn, (x, y))
    err = info.value
    assert (err.output_index, err.input_index) == (1, 1)
    assert "for output 1 with respect to input 1" in str(err)
    # non-scalar output: the message says which projection
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda x, y: x * y.detach() * y, (x, y))
    err = info.value
    assert (err.output_index, err.input_index, err.projection) == (0, 1, 0)
    assert "projection 0 of 3" in str(err)


def test_gradcheck_leaves_the_callers_tensors_alone():
    x = _t(X3)
    y = _t(M23)
    c = _t(X3, requires_grad=False)
    (x * 3.0).sum().backward()  # x.grad = 3 before the check
    g = x.grad
    before = g.numpy()
    values = [x.numpy(), y.numpy()]
    for fn in (lambda x, y, c: x * y * c, lambda x, y, c: x.detach() * x * y):  # right, wrong
        gradcheck(fn, (x, y, c), raise_exception=False)
        assert x.grad is g and np.array_equal(x.grad.numpy(), before)
        assert y.grad is None and c.grad is None
        assert np.array_equal(x.numpy(), values[0]) and np.array_equal(y.numpy(), values[1])
        assert x.requires_grad and y.requires_grad and not c.requires_grad


def test_gradcheck_checks_a_non_leaf_input_by_its_value():
    x = _t(X3)
    z = x * 2.0  # recorded: gradcheck differentiates with respect to z's value
    assert gradcheck(lambda z: td.exp(z), z)
    z.backward(gradient=np.ones(3))  # z's graph was neither released nor swept
    assert np.array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])


def test_gradcheck_tolerances_are_honoured():
    x = _t(X3)
    fn = lambda x: td.exp(x).sum()  # noqa: E731
    assert gradcheck(fn, x)
    # central differences are never exact, so zero tolerance rejects even a right gradient
    assert gradcheck(fn, x, atol=0.0, rtol=0.0, raise_exception=False) is False
    # a 1% error passes with a 2% relative tolerance
    assert gradcheck(lambda x: x + 0.01 * (x - x.detach()), x, rtol=0.02)


def test_float32_gets_float32_defaults():
    assert GRADCHECK_DEFAULTS[np.dtype(np.float64)] == (1e-6, 1e-5, 1e-3)
    x = _t(M23, np.float32)
    fn = lambda x: td.exp(x) * td.sin(x)  # noqa: E731
    assert gradcheck(fn, x)
    # float64's step is far below float32's resolution: the differences are noise
    assert gradcheck(fn, x, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=False) is False
    # and the float32 defaults still catch a wrong gradient
    assert gradcheck(lambda x: x.detach() * x, x, raise_exception=False) is False


def test_gradcheck_usage_errors():
    with pytest.raises(ValueError, match="at least one input"):
        gradcheck(lambda x: x * 2.0, _t(X3, requires_grad=False))
    with pytest.raises(TypeError, match="must return a Tensor"):
        gradcheck(lambda x: float(x.sum()), _t(X3))
    with pytest.raises(TypeError, match="floating-point"):
        gradcheck(lambda x: x > 0.0, _t(X3))


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------
@given(shape=tst.shapes(min_dims=1, max_dims=2, min_side=2, max_side=3), data=st.data())
def test_shapes_and_broadcastable_shapes(shape, data):
    assert 1 <= len(shape) <= 2 and all(2 <= d <= 3 for d in shape)
    other = data.draw(tst.broadcastable_shapes(shape))
    np.broadcast_shapes(shape, other)  # raises if they do not broadcast


@given(data=st.data(), dtype=st.sampled_from([np.float64, np.float32]),
       rg=st.booleans())
def test_tensors(data, dtype, rg):
    t = data.draw(tst.tensors(dtype, shape=(2, 3), requires_grad=rg))
    assert isinstance(t, td.Tensor) and t.is_leaf
    assert t.shape == (2, 3) and t.dtype == dtype and t.requires_grad == rg
    assert np.all(np.abs(t.numpy()) <= 10.0)
    s = data.draw(tst.tensors(shape=tst.shapes(max_dims=1), elements=st.just(0.5)))
    assert s.ndim <= 1 and np.all(s.numpy() == 0.5)


def test_tensors_refuses_int_tensors_that_require_grad():
    with pytest.raises(Exception, match="floating-point"):
        tst.tensors(np.int64, requires_grad=True).example()


def test_every_op_row_has_a_usable_bound():
    # after squashing, operands are within 1: every row must then give a finite bound
    for row in tst.OPS:
        b = row.bound(*([1.0] * row.arity))
        assert math.isfinite(b) and b > 0, row.name
        assert row.arity in (1, 2), row.name


UNARY_PRIMITIVES = [p for p in P.PUBLIC if p.arity == 1]


def test_every_public_unary_primitive_is_in_the_op_table():
    rows = {r.name: r for r in tst.OPS}
    missing = [p.name for p in UNARY_PRIMITIVES if p.name not in rows]
    assert not missing, f"no OPS row for {missing}"
    for p in UNARY_PRIMITIVES:
        assert rows[p.name].expr.startswith(f"td.{p.name}("), rows[p.name]
        assert rows[p.name].arity == 1, rows[p.name]


@pytest.mark.parametrize("p", UNARY_PRIMITIVES, ids=[p.name for p in UNARY_PRIMITIVES])
def test_unary_rows_keep_their_operand_in_the_primitive_domain(p):
    # td.<name>(adapter): the adapter maps every operand into the domain of the table of
    # primitives, except relu's and abs's kink shift, which keeps both slopes in play
    row = next(r for r in tst.OPS if r.name == p.name)
    adapter = row.expr[len(f"td.{p.name}("):-1]
    if str(tst.KINK_SHIFT) in adapter:
        assert p.name in ("relu", "abs")
        return
    v = np.concatenate([np.linspace(-30.0, 30.0, 6001), [-1e300, -1e-300, 0.0, 1e300]])
    x = eval(adapter.format("v"), {"td": td}, {"v": td.tensor(v)}).numpy()  # noqa: S307
    (intervals,) = p.domain
    inside = np.any([(lo <= x) & (x <= hi) for lo, hi in intervals], axis=0)
    assert inside.all(), x[~inside]


@pytest.mark.parametrize("row", [r for r in tst.OPS if r.arity == 1 and r.params is None],
                         ids=[r.name for r in tst.OPS if r.arity == 1 and r.params is None])
@pytest.mark.parametrize("b", [0.25, 1.0, 2.0, 10.0])
def test_unary_rows_stay_within_their_bounds(row, b):
    v = np.linspace(-b, b, 4001)
    out = eval(row.expr.format("v"), {"td": td}, {"v": td.tensor(v)}).numpy()  # noqa: S307
    bound = row.bound(b)
    assert np.all(np.abs(out) <= bound), (row.name, np.abs(out).max(), bound)


@settings(max_examples=settings.default.max_examples * 2)
@given(prog=tst.programs(), data=st.data())
def test_programs_stay_finite_and_within_their_bounds(prog, data):
    xs = data.draw(prog.input_tensors())
    arrays = [x.numpy() for x in xs]
    values = prog.trace(*arrays)  # NumPy raises on overflow, division by zero or nan
    assert len(values) == prog.n_inputs + len(prog.steps)
    for step, v in zip(prog.steps, values[prog.n_inputs:]):
        assert v.shape == step.shape, step
        assert np.all(np.abs(v) <= step.bound * (1 + 1e-12)), (step, v)
    # tapediff computes what NumPy computes
    out = prog(*xs)
    assert out.shape == () and out.requires_grad
    assert out.item() == pytest.approx(prog.reference(*arrays), rel=1e-9, abs=1e-12)


@given(prog=tst.programs(max_ops=4))
def test_program_repr_is_the_source_that_runs(prog):
    env = {"td": td, "weights": tst.program_weights}
    exec(repr(prog), env)  # noqa: S102
    xs = [np.linspace(-1.0, 1.5, math.prod(s)).reshape(s) for s in prog.input_shapes]
    expected = prog(*(td.tensor(a) for a in xs)).item()
    assert env["program"](*(td.tensor(a) for a in xs)).item() == expected
    assert repr(prog).count("\n") == len(prog.steps) + 1  # header, one line per step, return


def test_programs_reject_unknown_ops():
    with pytest.raises(Exception, match="no op named"):
        tst.programs(ops=["nope"]).example()


@pytest.mark.parametrize("row", tst.OPS, ids=[r.name for r in tst.OPS])
@PER_OP
@given(data=st.data())
def test_every_op_passes_gradcheck(row, data):
    prog = data.draw(tst.programs(ops=[row], min_ops=1, max_ops=1), label="program")
    assert prog.steps[-1].op == row.name  # the row itself, not only a squash step
    xs = data.draw(prog.input_tensors(), label="inputs")
    assert gradcheck(prog, xs)


@pytest.mark.parametrize("row", tst.OPS, ids=[r.name for r in tst.OPS])
@PER_OP
@given(data=st.data())
def test_every_op_passes_gradcheck_float32(row, data):
    prog = data.draw(tst.programs(ops=[row], min_ops=1, max_ops=1), label="program")
    xs = data.draw(prog.input_tensors(np.float32), label="inputs")
    assert gradcheck(prog, xs)


@settings(max_examples=settings.default.max_examples + 15)
@given(prog=tst.programs(), data=st.data())
def test_programs_pass_gradcheck(prog, data):
    xs = data.draw(prog.input_tensors(requires_grad=st.booleans()), label="inputs")
    if not any(x.requires_grad for x in xs):
        xs = (xs[0].detach().requires_grad_(),) + tuple(xs[1:])
    assert gradcheck(prog, xs)


# ---------------------------------------------------------------------------------------------
# Library bugs these tools found, as deterministic tests
# ---------------------------------------------------------------------------------------------
def test_sum_of_a_0d_tensor_fits_in_its_side_table_reservation():
    # Found by test_every_op_passes_gradcheck (the programs' final ``.sum()`` of a 0-d
    # value): at commit 65cca6b a 0-d sum reserved 4 side-table entries but wrote 6 (its
    # layout is stored as one dimension of size 1), which raised ValueError in put_meta
    # whenever the table was within 5 entries of full.
    s = td.tensor(1.0, requires_grad=True)
    with td.tape():
        ys = [s.sum() for _ in range(200)]  # 200 * 6 entries: crosses the 1024-entry table
    ys[-1].backward()
    assert s.grad.item() == 1.0


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_program_inputs_keep_away_from_the_shifted_kinks(data):
    # Found by test_every_op_passes_gradcheck_float32[abs]: the input 0.4141 (float32) put
    # gradcheck's central difference (step 1e-3) across abs's kink at KINK_SHIFT.
    prog = data.draw(tst.programs(ops=[next(r for r in tst.OPS if r.name == "abs")],
                                  min_ops=1, max_ops=1))
    for x in data.draw(prog.input_tensors(np.float32)):
        assert (np.abs(np.abs(x.numpy()) - tst.KINK_SHIFT) > 4e-3).all()


def test_program_inputs_keep_away_from_kinks_the_shifts_cancel_into():
    # Found by test_random_programs_hessian_blocks_against_differences_of_grad: in
    # abs(relu(v0 + v0 + s) - s) the shifts cancel, and Hypothesis drew v0 = 0, the kink:
    # the Hessian there is 0 and a difference of gradients across it 2e5.
    s = tst.KINK_SHIFT
    prog = tst.Program([()], [tst.Step("v1", "add", "v0 + v0", (), 4.0),
                              tst.Step("v2", "relu", f"td.relu(v1 + {s})", (), 4.5),
                              tst.Step("v3", "abs", f"td.abs(v2 - {s})", (), 4.1)])
    assert prog.kink_distance(np.float64(0.0)) == 0.0
    assert prog.kink_distance(np.float64(0.25)) == pytest.approx(0.5)
    assert prog.kink_distance(np.float64(-1.0)) == pytest.approx(s)  # relu's operand
    assert tst.Program([(2,)], [tst.Step("v1", "exp", "td.exp(v0)", (2,), 8.0)]).kink_distance(
        np.zeros(2)) == math.inf

    @settings(max_examples=40, deadline=None)
    @given(xs=prog.input_tensors())
    def check(xs):
        assert abs(xs[0].item()) > 5e-3

    check()
