"""The table of primitives (tapediff/_src/_primitives.py) and what is derived from it.

* Every record writer leaves identical rows: the recording engine writes records through
  ``Tape.append``/``Tape.push``, ``_record_scalar``, the hand-inlined writes of ``_binary``
  (scalar tensor (op) number and tensor (op) tensor) and ``_emit`` (arrays).  Each
  elementwise primitive is recorded once on a 0-d float64 tensor (the scalar fast path) and
  once on a shape-(1,) tensor (the array path), and the two tapes must agree field by field.
* ``erf``, the newest primitive: values against ``math.erf`` (and SciPy), gradients against
  finite differences, its closed form and PyTorch, float32 end to end, the method and the
  SciPy ufunc on tensors.
* The table is consistent with the kernels (``K.TRAITS``), the public API (``td.<name>``,
  ``Tensor.<name>``, reprs), the ufunc names it gives and replay's NumPy hand-back.

``helpers.into_domain`` maps inputs inside a row's ``domain``, for every test whose per-op rows
are derived from the table.
"""
from __future__ import annotations

import importlib
import math
import operator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapediff as td
from tapediff._src import _kernels as K
from tapediff._src import _primitives as P

from helpers import MARGIN, check_grad, crash_guard, into_domain, projection

_EPS = np.finfo(np.float64).eps


# ---------------------------------------------------------------------------------------------
# inputs inside a row's domain (shared with the other table-driven tests)
# ---------------------------------------------------------------------------------------------
def domain_values(domain: tuple) -> st.SearchStrategy:
    """Floats strictly inside ``domain`` (any of its intervals), ``MARGIN`` from the ends."""
    return st.one_of(*(st.floats(lo + MARGIN * (hi - lo), hi - MARGIN * (hi - lo))
                       for lo, hi in domain))


def public(arity: int | None = None) -> list:
    return [p for p in P.PUBLIC if arity is None or p.arity == arity]


def _id(p: P.Primitive) -> str:
    return p.name or p.grad_fn


# ---------------------------------------------------------------------------------------------
# every record writer leaves identical rows
# ---------------------------------------------------------------------------------------------
# The operators between tensors, by their opcode: with a Python number on either side they
# record the opcodes "with a constant" (OP_ADD_C ...), with the number as the parameter.
OPERATORS = {K.OP_ADD: ("+", operator.add), K.OP_SUB: ("-", operator.sub),
             K.OP_MUL: ("*", operator.mul), K.OP_DIV: ("/", operator.truediv),
             K.OP_POW: ("**", operator.pow)}


def _with_number(f, c: float, number_first: bool):
    return (lambda x: f(c, x)) if number_first else (lambda x: f(x, c))


def _cases() -> list:
    """(label, function of tensors, domain per tensor operand) for every way scalar code
    records an elementwise primitive."""
    cases = [(f"td.{p.name}", getattr(td, p.name), p.domain) for p in P.PUBLIC]
    for op, (sym, f) in OPERATORS.items():
        dom = P.BY_OP[op].domain
        cases.append((f"x {sym} y", f, dom))
        for c in (2.5, 2):  # a float and an int: both become the record's parameter
            cases.append((f"x {sym} {c!r}", _with_number(f, c, False), dom[:1]))
            cases.append((f"{c!r} {sym} x", _with_number(f, c, True), dom[1:]))
    return cases


CASES = _cases()
FIELDS = ("op", "in_a", "in_b", "n", "param", "meta_at", "flag", "arena_of")  # all but the arena offset ``off``


def _record(fn, values: list, shape: tuple) -> tuple[list, td.Tensor]:
    """The records ``fn`` leaves on a fresh tape, applied to leaves of ``shape`` holding
    ``values``; input slots are named by the leaf record they point at ("leaf0", "leaf1", in
    order of recording)."""
    with td.tape() as t:
        if shape == ():
            xs = [td.tensor(float(v), requires_grad=True) for v in values]
            assert all(type(x._v) is float for x in xs)  # the scalar fast path's tensors
        else:
            xs = [td.tensor(np.full(shape, v), requires_grad=True) for v in values]
        y = fn(*xs)
    leaves = [i for i in range(len(t)) if t.op[i] == K.OP_LEAF]
    names = {s: f"leaf{k}" for k, s in enumerate(leaves)}
    rows = []
    for i in range(len(t)):
        row = {f: getattr(t, f)[i].item() for f in FIELDS}
        row["in_a"] = names.get(row["in_a"], row["in_a"])
        row["in_b"] = names.get(row["in_b"], row["in_b"])
        row["value"] = t.value_view(i, (int(t.n[i]),)).tolist()
        rows.append(row)
    # the leaves hold the inputs, recorded in argument order; the primitive comes last
    assert [rows[s]["value"] for s in leaves] == [[float(v)] for v in values]
    assert rows[-1]["value"] == np.ravel(y.numpy()).tolist()
    return rows, y


def test_the_cases_record_every_elementwise_opcode():
    recorded = set()
    for _, fn, dom in CASES:
        rows, _ = _record(fn, [d[0][0] + 0.4 * (d[0][1] - d[0][0]) for d in dom], ())
        recorded.add(rows[-1]["op"])
    elementwise = {op for op in range(K.NUM_OPCODES) if K.TRAITS[op] & K.ELEMENTWISE}
    assert recorded == elementwise, elementwise ^ recorded


@pytest.mark.parametrize("label,fn,dom", CASES, ids=[c[0] for c in CASES])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_scalar_and_array_paths_leave_identical_rows(label, fn, dom, data):
    values = [data.draw(domain_values(d), label=f"x{k}") for k, d in enumerate(dom)]
    scalar, ys = _record(fn, values, ())
    array, ya = _record(fn, values, (1,))
    assert type(ys._v) is float and ys.shape == () and ya.shape == (1,)
    assert len(scalar) == len(array) == len(dom) + 1  # the leaves, then the primitive
    for i, (s, a) in enumerate(zip(scalar, array)):
        for f in FIELDS:
            assert s[f] == a[f], f"{label}: record {i}, field {f}: {s[f]!r} != {a[f]!r}"
        # math.* against NumPy's loops: the last bit may differ
        np.testing.assert_allclose(s["value"], a["value"], rtol=4 * _EPS, atol=4 * _EPS,
                                   err_msg=f"{label}: record {i}")
    assert K.TRAITS[scalar[-1]["op"]] & K.ELEMENTWISE
    assert (scalar[-1]["in_a"], scalar[-1]["in_b"]) == (("leaf0", "leaf1") if len(dom) == 2
                                                    else ("leaf0", -1))
    np.testing.assert_allclose(ys.item(), ya.numpy()[0], rtol=4 * _EPS, atol=4 * _EPS)


def test_inline_writes_leave_the_defaults_tape_push_documents():
    """The inline writers set only op, ia (ib for tensor (op) tensor, p for a number operand),
    off and the value: every other field must hold the default ``Tape.push`` documents, also
    in slots freed by a reclaim that held records of every other kind."""
    with td.tape() as t:
        s = td.tensor(0.7, requires_grad=True)
        keep = s * 2.0
        a = td.tensor(np.linspace(0.5, 1.5, 12, dtype=np.float32).reshape(3, 4),
                      requires_grad=True)
        junk = [(a * a).sum(axis=0) for _ in range(4)]  # float32, binary, side-table blocks
        junk += [td.tensor(np.ones(3), requires_grad=True) * td.tensor(np.ones((2, 3)))]
        junk[0].sum().backward()  # released flags
        top = len(t)
        before = {f: getattr(t, f)[:top].copy() for f in FIELDS}
        rcap = t.rcap
        del junk
        t.reclaim()
        start = len(t)
        assert t.rcap == rcap  # no reallocation: the freed slots are rewritten in place
        k = keep
        outs = [td.exp(k), k * 3.0, 2.0 - k, k + k, k ** 2, td.sigmoid(k), 2 / k, k - 0.5]
        unary = {0, 5}
    end = len(t)
    assert end - start == len(outs)
    assert end <= top  # the new records sit in slots that held the junk's records
    dirty = [i for i in range(start, end) if before["meta_at"][i] != -1 or before["flag"][i] != 0
             or before["arena_of"][i] != K.KIND_F64 or before["n"][i] != 1 or before["in_b"][i] != -1]
    assert dirty, "the recycled slots held only default records: nothing was tested"
    (k_slot,) = {int(t.in_a[i]) for i in range(start, end)}  # every new record reads keep
    assert t.op[k_slot] == K.OP_MUL_C and t.value_view(k_slot, ())[()] == keep.item()
    for j, i in enumerate(range(start, end)):
        assert t.in_b[i] == (k_slot if j == 3 else -1), j  # k + k: the one tensor (op) tensor
        assert (t.meta_at[i], t.flag[i], t.n[i], t.arena_of[i]) == (-1, 0, 1, K.KIND_F64), j
        if j in unary:
            assert t.param[i] == 0.0, j
        assert type(outs[j]._v) is float and t.value_view(i, ())[()] == outs[j].item(), j


# ---------------------------------------------------------------------------------------------
# erf
# ---------------------------------------------------------------------------------------------
_2_SQRT_PI = 2.0 / math.sqrt(math.pi)
FINITE = st.floats(-1e3, 1e3, allow_nan=False)
ARRAYS = hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, min_side=1,
                                                 max_side=4),
                    elements=st.floats(-3.0, 3.0, allow_nan=False))


def _erf_ref(a: np.ndarray) -> np.ndarray:
    return np.array([math.erf(v) for v in np.ravel(a)]).reshape(np.shape(a))


@given(v=FINITE)
def test_erf_of_a_float_is_math_erf(v):
    x = td.tensor(v, requires_grad=True)
    y = td.erf(x)
    assert y.item() == math.erf(v) and y.grad_fn == "<ErfBackward0>"
    y.backward()
    np.testing.assert_allclose(x.grad.item(), _2_SQRT_PI * math.exp(-v * v), rtol=1e-15,
                               atol=1e-300)


@given(a=ARRAYS)
def test_erf_of_an_array_is_math_erf_and_scipy_erf(a):
    y = td.erf(td.tensor(a))
    assert y.shape == a.shape and y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), _erf_ref(a), rtol=2 * _EPS, atol=1e-300)
    try:
        from scipy import special
    except ImportError:
        return
    np.testing.assert_allclose(y.numpy(), special.erf(a), rtol=4 * _EPS, atol=1e-300)


def test_erf_closed_forms():
    x = td.tensor([0.0, -0.0, np.inf, -np.inf, 40.0, -40.0, np.nan], requires_grad=True)
    with np.errstate(invalid="ignore"):
        y = td.erf(x)
        (y * 1.0).sum().backward()
    np.testing.assert_array_equal(y.numpy(), [0.0, -0.0, 1.0, -1.0, 1.0, -1.0, np.nan])
    assert np.signbit(y.numpy()[1])
    np.testing.assert_array_equal(x.grad.numpy(), [_2_SQRT_PI] * 2 + [0.0] * 4 + [np.nan])
    a = np.linspace(-2.5, 2.5, 11)  # odd
    np.testing.assert_array_equal(td.erf(td.tensor(-a)).numpy(), -td.erf(td.tensor(a)).numpy())


@crash_guard
@settings(deadline=None)
@given(a=ARRAYS)
def test_erf_gradient_matches_finite_differences(a):
    (x,) = check_grad(td.erf, [a])
    w = projection(a.shape)
    np.testing.assert_allclose(x.grad.numpy(), w * _2_SQRT_PI * np.exp(-a * a), rtol=1e-14,
                               atol=1e-300)


@given(a=ARRAYS)
def test_erf_in_float32_stays_float32(a):
    a = a.astype(np.float32)
    with td.tape() as t:
        x = td.tensor(a, requires_grad=True)
        y = td.erf(x)
        assert y.dtype == np.float32 and t.arena_of[len(t) - 1] == K.KIND_F32
        (y * 2.0).sum().backward()
    np.testing.assert_allclose(y.numpy(), _erf_ref(a), rtol=2e-7, atol=1e-7)
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.numpy(), 2 * _2_SQRT_PI * np.exp(-a.astype(float) ** 2),
                               rtol=1e-6, atol=1e-7)


def test_erf_method_and_int_inputs():
    a = np.array([[-1.5, 0.25], [0.5, 2.0]])
    x = td.tensor(a, requires_grad=True)
    y = x.erf()
    assert y.grad_fn == "<ErfBackward0>"
    np.testing.assert_array_equal(y.numpy(), td.erf(x).numpy())
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), _2_SQRT_PI * np.exp(-a * a), rtol=1e-15)
    i = td.erf(td.tensor([0, 1, -2]))  # promoted to float64, as NumPy's ufuncs do
    assert i.dtype == np.float64
    np.testing.assert_array_equal(i.numpy(), _erf_ref(np.array([0.0, 1.0, -2.0])))


@settings(max_examples=10, deadline=None)
@given(a=ARRAYS)
def test_scipy_erf_on_tensors_records_erf(a):
    special = pytest.importorskip("scipy.special")
    with td.tape() as t:
        x = td.tensor(a, requires_grad=True)
        y = special.erf(x)
        assert isinstance(y, td.Tensor) and y.grad_fn == "<ErfBackward0>"
        assert t.op[len(t) - 1] == K.OP_ERF
    np.testing.assert_allclose(y.numpy(), special.erf(a), rtol=4 * _EPS, atol=1e-300)
    check_grad(special.erf, [a])


@settings(deadline=None)
@given(a=ARRAYS, f32=st.booleans(), fn=st.sampled_from(["special.erf", "erf"]))
def test_erf_gradient_equals_pytorch(a, f32, fn):
    torch = pytest.importorskip("torch")
    dt = np.float32 if f32 else np.float64
    a = a.astype(dt)
    w = projection(a.shape).astype(dt)
    x = td.tensor(a, requires_grad=True)
    y = td.erf(x)
    (y * w).sum().backward()
    xt = torch.tensor(a, requires_grad=True)
    erf = torch.special.erf if fn == "special.erf" else torch.erf
    yt = erf(xt)
    (yt * torch.tensor(w)).sum().backward()
    rtol, atol = (2e-6, 1e-7) if f32 else (1e-14, 1e-300)
    assert x.grad.dtype == dt
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# the table is consistent
# ---------------------------------------------------------------------------------------------
def test_one_row_per_opcode_and_the_derived_tables():
    assert sorted(P.BY_OP) == list(range(K.NUM_OPCODES)) == list(range(len(K.TRAITS)))
    assert P.GRAD_FN == {op: P.BY_OP[op].grad_fn for op in range(K.NUM_OPCODES)}
    assert set(P.UNARY) == {p.name for p in public(1)}
    for name, (op, array, scalar) in P.UNARY.items():
        assert P.BY_OP[op].name == name and array is not None and scalar is not None
    names = [p.name for p in P.PUBLIC]
    assert len(names) == len(set(names))
    ufuncs = [u for p in P.PRIMITIVES for u in p.ufuncs]
    assert len(ufuncs) == len(set(ufuncs)), "a ufunc dispatches to one primitive"


@pytest.mark.parametrize("p", P.PRIMITIVES, ids=_id)
def test_opcode_classes_come_from_traits(p):
    tr = int(K.TRAITS[p.op])
    if p in P.PUBLIC:
        assert tr & K.ELEMENTWISE
        assert bool(tr & K.ONE_INPUT) == (p.arity == 1)
    if tr & K.ELEMENTWISE:  # the domain gives one interval union per tensor operand
        arity = 1 if tr & K.ONE_INPUT else 2
        assert p.arity == arity and len(p.domain) == arity
        assert not tr & (K.NO_GRADIENT | K.PYTHON_RULE | K.META_INPUTS)
    else:  # layout, selection, reductions...: recorded by tapediff._src._ops, not from the table
        assert not (p.name or p.domain or p.ufuncs or p.array or p.replay_numpy), p
    for lo, hi in (iv for d in p.domain for iv in d):
        assert lo < hi


def test_replay_hands_back_to_numpy_exactly_the_replay_numpy_rows():
    assert P.TO_NUMPY.dtype == np.uint8 and P.TO_NUMPY.shape == (K.NUM_OPCODES,)
    np.testing.assert_array_equal(
        P.TO_NUMPY, [int(P.BY_OP[op].replay_numpy) for op in range(K.NUM_OPCODES)])
    assert P.NUMPY_RULES == {p.op: p.array for p in P.PRIMITIVES if p.replay_numpy}
    for op in P.NUMPY_RULES:  # Tape._python_value hands back one input, as ``array(a, out=)``
        assert K.TRAITS[op] & K.ONE_INPUT and K.TRAITS[op] & K.ELEMENTWISE


def test_rows_with_python_rules_are_python_rule_opcodes():
    """A row giving NumPy rules (``forward``/``reverse``) gives both and is a PYTHON_RULE
    opcode; the only PYTHON_RULE opcodes without them are the driver's own (matmul, cast)."""
    for p in P.PRIMITIVES:
        tr = int(K.TRAITS[p.op])
        if p.forward is not None or p.reverse is not None:
            assert tr & K.PYTHON_RULE and callable(p.forward) and callable(p.reverse), p
        elif tr & K.PYTHON_RULE:
            assert p.op in (K.OP_MATMUL, K.OP_CAST), p


@pytest.mark.parametrize("p", public(), ids=_id)
def test_every_public_row_is_a_function_and_a_method(p):
    fn = getattr(td, p.name)
    assert fn.__name__ == p.name and fn.__doc__ == p.doc and p.name in td.__all__
    method = getattr(td.Tensor, p.name)
    rng = np.random.default_rng(p.op)
    arrays = [into_domain(rng.uniform(0, 1, (2, 3)), d) for d in p.domain]
    with td.tape() as t:
        xs = [td.tensor(a, requires_grad=True) for a in arrays]
        y = fn(*xs)
        assert t.op[len(t) - 1] == p.op
        m = method(*xs)
        assert t.op[len(t) - 1] == p.op
    assert y.grad_fn == m.grad_fn == f"<{p.grad_fn}Backward0>"
    assert f"grad_fn=<{p.grad_fn}Backward0>" in repr(y)
    with np.errstate(all="raise"):
        expected = p.array(*arrays)
    np.testing.assert_array_equal(y.numpy(), expected)
    np.testing.assert_array_equal(m.numpy(), expected)


@pytest.mark.parametrize("name", [u for p in P.PRIMITIVES for u in p.ufuncs])
def test_every_ufunc_name_resolves(name):
    mod, attr = name.rsplit(".", 1)
    if mod != "numpy":
        pytest.importorskip(mod)
    uf = getattr(importlib.import_module(mod), attr)
    assert isinstance(uf, np.ufunc)
    (p,) = [p for p in P.PRIMITIVES if name in p.ufuncs]
    assert uf.nin == p.arity and uf.nout == 1 and p in P.PUBLIC


@pytest.mark.parametrize("p", [p for p in P.PRIMITIVES if p.array is not None], ids=_id)
def test_scalar_and_array_forwards_agree_on_the_domain(p):
    grids = [np.concatenate([np.linspace(lo, hi, 9) for lo, hi in d]) for d in p.domain]
    points = [g.ravel() for g in np.meshgrid(*grids, indexing="ij")]
    with np.errstate(all="raise"):
        expected = p.array(*points)
    got = [p.scalar(*(float(g[k]) for g in points)) for k in range(len(points[0]))]
    np.testing.assert_allclose(got, expected, rtol=4 * _EPS, atol=4 * _EPS)
    out = np.empty_like(points[0])
    assert p.array(*points, out=out) is out  # the recording engine writes into the arena
    np.testing.assert_array_equal(out, expected)
