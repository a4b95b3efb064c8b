"""The jitted sweep against an independent NumPy interpreter of the same records.

Programs are drawn by hypothesis from the steps below, composed on random inputs; for each,
the tape's records are swept by tests/reference_sweep.py and by tapediff's backward, and
every leaf's gradient must agree.  The steps of the public elementwise primitives are derived
from the table of primitives (``tapediff._src._primitives.PUBLIC``), their operands squashed into
the row's domain; the others (operators, layout, reductions...) are written here.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapediff as td
from tapediff._src import _kernels as K
from tapediff._src import _primitives as P

from helpers import into_domain
from reference_sweep import ELEMENTWISE_RULES, reference_grads


def _unit(v):
    """Any real tensor squashed smoothly into [0, 1], with arithmetic only."""
    return v / (v * v + 1.0) + 0.5


def _primitive_step(p: P.Primitive):
    """td.<name> of a public elementwise primitive on the running value v (and the leaf y,
    for a binary one), squashed into the row's domain."""
    fn = getattr(td, p.name)
    if p.arity == 1:
        return lambda v, x, y: fn(into_domain(_unit(v), p.domain[0]))
    return lambda v, x, y: fn(into_domain(_unit(v), p.domain[0]),
                              into_domain(_unit(y), p.domain[1]))


# steps: (name, function of the running value v and the leaves x, y), all kept in domain
STEPS = [
    ("mul", lambda v, x, y: v * y), ("add", lambda v, x, y: v + x),
    ("sub", lambda v, x, y: v - y), ("div", lambda v, x, y: v / (y * y + 1.0)),
    ("sub_c", lambda v, x, y: 2.0 - v), ("div_c", lambda v, x, y: v / 3.0),
    ("rdiv_c", lambda v, x, y: 1.0 / (v * v + 1.0)), ("pow", lambda v, x, y: (v * v + 1.0) ** y),
    ("square", lambda v, x, y: v ** 2), ("rpow_c", lambda v, x, y: 3.0 ** _unit(v)),
    ("flip", lambda v, x, y: td.flip(v, 0)), ("T", lambda v, x, y: (v.T * 1.0).T),
    ("roll", lambda v, x, y: td.roll(v, 1, axis=1)),
    ("gather", lambda v, x, y: v[[2, 0, 0]] * 1.0),
    ("sum_bcast", lambda v, x, y: v - v.sum(axis=0, keepdims=True)),
    ("mean1", lambda v, x, y: v * v.mean(axis=1, keepdims=True)),
    ("max", lambda v, x, y: v + v.max(axis=0)),
    ("where", lambda v, x, y: td.where(x.numpy() > 0, v, y)),
    ("maximum", lambda v, x, y: td.maximum(v, y)),
    ("concat", lambda v, x, y: td.concatenate([v[:2], v[2:] * 2.0], axis=0)),
    ("prod", lambda v, x, y: v * td.prod(td.tanh(v), axis=0)),
    ("cumsum", lambda v, x, y: td.cumsum(v, axis=0)),
    ("cumprod", lambda v, x, y: td.cumprod(td.tanh(v), axis=1)),
    ("matmul", lambda v, x, y: td.tanh(v @ y.T) @ x),
    ("softmax", lambda v, x, y: td.softmax(v, axis=1)),
    ("at_set", lambda v, x, y: v.at[[1, 1]].set(y[0])),
    # broadcasts in both directions: read in place (width >= K.CHUNK_MIN) or written out
    ("outer_bcast", lambda v, x, y: (v[:, None, :] * y[None, :, :]).sum(axis=1)),
    ("pow_bcast", lambda v, x, y: (v * v + 1.0) ** y[:1]),
    ("div_rows", lambda v, x, y: v / (y[:, :1] ** 2 + 1.0)),
    ("atan2_bcast", lambda v, x, y: td.arctan2(y[1], v)),
    ("f32", lambda v, x, y: (v.astype(np.float32) * 2.0).astype(np.float64)),
    *((f"td.{p.name}", _primitive_step(p)) for p in P.PUBLIC),
]
NAMES = [name for name, _ in STEPS]
ELEMENTWISE = [op for op in range(K.NUM_OPCODES) if K.TRAITS[op] & K.ELEMENTWISE]


def _leaf_slots(t: td.Tape, leaf: td.Tensor) -> list[int]:
    """The LEAF records of ``t`` holding the values of ``leaf``."""
    v = leaf.numpy().reshape(-1)
    return [s for s in range(len(t)) if t.op[s] == K.OP_LEAF and t.n[s] == v.size
            and np.array_equal(t.value_view(s, (v.size,)), v)]


def _check(steps: list[int], seed: int, width: int = 4) -> None:
    rng = np.random.default_rng(seed)
    x = td.tensor(rng.uniform(-1, 1, (3, width)), requires_grad=True)
    y = td.tensor(rng.uniform(-1, 1, (3, width)), requires_grad=True)
    names = [NAMES[k] for k in steps]
    with td.tape() as t:
        v = x
        for k in steps:
            v = STEPS[k][1](v, x, y)
        out = (v * rng.normal(size=v.shape)).sum()
        ref = reference_grads(t, out._slot, np.ones(1))
        out.backward()
        for leaf in (x, y):
            reached = [ref[s] for s in _leaf_slots(t, leaf) if s in ref]
            if not reached:
                assert leaf.grad is None or not np.any(leaf.grad.numpy()), names
                continue
            f32 = "f32" in names  # adjoints of float32 records
            np.testing.assert_allclose(leaf.grad.numpy().reshape(-1), sum(reached),
                                       rtol=1e-5 if f32 else 1e-9, atol=1e-6 if f32 else 1e-12,
                                       err_msg=str(names))


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.sampled_from(range(len(STEPS))), min_size=1, max_size=6),
       seed=st.integers(0, 2 ** 16), width=st.sampled_from([4, K.CHUNK_MIN + 1]))
def test_jitted_sweep_matches_the_reference_interpreter(steps, seed, width):
    _check(steps, seed, width)


@pytest.mark.parametrize("width", [4, K.CHUNK_MIN + 1])
@pytest.mark.parametrize("k", range(len(STEPS)), ids=NAMES)
def test_every_step_alone_matches_the_reference_interpreter(k, width):
    _check([k, k], k, width)  # twice: the second application reads a computed value


def test_wide_broadcasts_are_read_in_place():
    """The broadcast steps at a width of CHUNK_MIN record no OP_RESTRIDE (their operands are
    read through a layout); at width 4 they write the operands out."""
    for width, layouts in ((K.CHUNK_MIN + 1, True), (4, False)):
        for name in ("outer_bcast", "pow_bcast", "div_rows", "atan2_bcast"):
            step = STEPS[NAMES.index(name)][1]
            x = td.tensor(np.linspace(-1, 1, 3 * width).reshape(3, width), requires_grad=True)
            with td.tape() as t:
                step(x, x, x * 0.5)
            ops = t.op[:len(t)]
            elementwise = [i for i in range(len(t)) if K.TRAITS[ops[i]] & K.ELEMENTWISE]
            assert any(t.meta_at[i] >= 0 for i in elementwise) == layouts, (name, width)
            broadcasts = [i for i in range(len(t)) if ops[i] == K.OP_RESTRIDE
                          and t.n[i] > t.n[t.in_a[i]]]
            assert bool(broadcasts) != layouts, (name, width)


def test_the_steps_record_every_elementwise_opcode():
    recorded = set()
    for _, step in STEPS:
        with td.tape() as t:
            x = td.tensor(np.linspace(-1, 1, 12).reshape(3, 4), requires_grad=True)
            step(x, x, x * 0.5)
        recorded |= set(t.op[:len(t)].tolist())
    assert set(ELEMENTWISE) <= recorded, set(ELEMENTWISE) - recorded


def test_the_reference_has_a_rule_for_every_elementwise_opcode():
    assert set(ELEMENTWISE_RULES) == set(ELEMENTWISE), set(ELEMENTWISE_RULES) ^ set(ELEMENTWISE)


@pytest.mark.parametrize("p", [P.BY_OP[op] for op in ELEMENTWISE if P.BY_OP[op].array is not None],
                         ids=lambda p: p.grad_fn)
def test_reference_rules_match_finite_differences_of_the_forward(p):
    """The reference's maths against central differences of the table's eager forward, over
    the row's domain: a check of the reference itself, independent of the kernels."""
    grids = [np.concatenate([np.linspace(lo, hi, 9)[1:-1] for lo, hi in d]) for d in p.domain]
    xs = [g.ravel() for g in np.meshgrid(*grids, indexing="ij")]
    y = p.array(*xs)
    g = np.ones_like(y)
    rule = ELEMENTWISE_RULES[p.op]
    got = rule(g, xs[0], xs[-1], y, 0.0)
    for i in range(p.arity):
        h = 1e-6 * np.maximum(1.0, np.abs(xs[i]))
        hi = [a + h if j == i else a for j, a in enumerate(xs)]
        lo = [a - h if j == i else a for j, a in enumerate(xs)]
        num = (p.array(*hi) - p.array(*lo)) / (2 * h)
        np.testing.assert_allclose(np.broadcast_to(got[i], y.shape), num, rtol=1e-6, atol=1e-8,
                                   err_msg=f"{p.grad_fn}: d/d{'ab'[i]}")


def test_layouts_that_read_each_input_element_once_are_marked():
    """A sum or a permuting view (transpose, flip) is marked p = 1, and its input's adjoint
    is assigned on a first touch rather than zeroed and added to; slices and broadcasts
    are not marked.  The gradients stay those of the reference, whichever record touches
    the input first."""
    x = td.tensor(np.linspace(-1, 1, 12).reshape(3, 4), requires_grad=True)
    with td.tape() as t:
        marked = [x.sum(), x.sum(axis=0), x.T, td.flip(x, 1), td.transpose(x[None], (2, 0, 1))]
        unmarked = [x[1:], x[:, ::2], td.broadcast_to(x[0], (2, 4))]
        w = np.arange(1.0, 13.0).reshape(3, 4)
        out = (x * w).sum() + sum((m * 2.0).sum() for m in marked[1:]) + marked[0] + \
            sum(u.sum() for u in unmarked)
    for m in marked:
        assert t.op[m._slot] == K.OP_RESTRIDE and t.param[m._slot] == 1.0
    for u in unmarked:
        assert t.op[u._slot] == K.OP_RESTRIDE and t.param[u._slot] == 0.0
    ref = reference_grads(t, out._slot, np.ones(1))
    out.backward()
    np.testing.assert_allclose(x.grad.numpy().reshape(-1),
                               sum(ref[s] for s in _leaf_slots(t, x) if s in ref), rtol=1e-13)
