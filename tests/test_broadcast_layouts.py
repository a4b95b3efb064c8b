"""Broadcast operands read in place (an elementwise record's broadcast layout).

An elementwise record of two operands whose shapes differ runs over its output in chunks of
at least ``K.CHUNK_MIN`` elements, each operand read at its own offset, where narrower
broadcasts write the operand out with an OP_RESTRIDE record.  Every path that reads the
records must follow the layout: backward, replay's forward and reverse sweeps, forward mode,
and the recorded backward of ``create_graph``.  Each is checked here against the same
computation with the operands broadcast explicitly (``td.broadcast_to``: written out, the
other path), against finite differences, and against PyTorch when it is installed.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapediff as td
from tapediff._src import _kernels as K
from tapediff._src._record import broadcast_layout
from tapediff.testing import gradcheck

W = K.CHUNK_MIN + 3  # a dimension wide enough for a layout

OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
    "arctan2": lambda a, b: td.arctan2(a, b),
    "hypot": lambda a, b: td.hypot(a, b),
}


@st.composite
def broadcast_pairs(draw):
    """Two shapes broadcasting to a base shape whose sides are 1, 2, 3 or wide."""
    base = draw(st.lists(st.sampled_from([1, 2, 3, W]), min_size=1, max_size=4))
    shapes = []
    for _ in range(2):
        keep = draw(st.integers(0, len(base)))  # leading dimensions dropped
        shapes.append(tuple(s if draw(st.booleans()) else 1 for s in base[len(base) - keep:]))
    return tuple(shapes)


def _inputs(shapes, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.5, 2.0, s).astype(dtype) for s in shapes]


def _explicit(f):
    """``f`` with both operands broadcast by OP_RESTRIDE records before it runs."""
    def g(a, b):
        shape = np.broadcast_shapes(a.shape, b.shape)
        return f(td.broadcast_to(a, shape), td.broadcast_to(b, shape))
    return g


def _grads(f, arrays, w):
    xs = [td.tensor(a, requires_grad=True) for a in arrays]
    out = f(*xs)
    (out * w).sum().backward()
    return out.numpy(), [x.grad.numpy() for x in xs]


@settings(max_examples=60, deadline=None)
@given(shapes=broadcast_pairs(), name=st.sampled_from(sorted(OPS)), seed=st.integers(0, 99))
def test_backward_matches_the_written_out_broadcast(shapes, name, seed):
    f = OPS[name]
    arrays = _inputs(shapes, seed)
    shape = np.broadcast_shapes(*shapes)
    w = np.random.default_rng(seed + 1).normal(size=shape)
    y1, g1 = _grads(f, arrays, w)
    y2, g2 = _grads(_explicit(f), arrays, w)
    np.testing.assert_allclose(y1, y2, rtol=1e-14)
    for a, b, s in zip(g1, g2, shapes):
        assert a.shape == s
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("shapes", [((3, 1, W), (1, 2, W)), ((2, W), (2, 1)), ((W,), (3, W)),
                                    ((2, 1, W, 1), (2, 3, W, 2)), ((1,), (2, W))])
def test_gradients_match_finite_differences(name, shapes):
    assert broadcast_layout(*shapes, np.broadcast_shapes(*shapes)) is not None or \
        shapes[0] == (1,) or shapes[0] == (2, 1, W, 1)
    assert gradcheck(OPS[name], [td.tensor(a, requires_grad=True) for a in _inputs(shapes, 0)])


def test_float32_stays_float32():
    a, b = _inputs(((3, 1, W), (1, 2, W)), 3, np.float32)
    xs = [td.tensor(v, requires_grad=True) for v in (a, b)]
    out = xs[0] * xs[1] + xs[0] / xs[1]
    out.sum().backward()
    assert out.dtype == np.float32 and xs[0].grad.dtype == np.float32
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    np.testing.assert_allclose(xs[0].grad.numpy(), np.broadcast_to(
        (b64 + 1 / b64).sum(axis=1, keepdims=True), a.shape), rtol=1e-5)
    np.testing.assert_allclose(xs[1].grad.numpy(),
                               (a64 - a64 / b64 ** 2).sum(axis=0, keepdims=True), rtol=1e-5)


def test_a_broadcast_operand_used_twice_and_a_constant_operand():
    rng = np.random.default_rng(4)
    a = td.tensor(rng.normal(size=(W,)), requires_grad=True)
    m = rng.normal(size=(3, W))
    out = (a * m) * a + td.tensor(m) / (a * a + 1.0)  # a read by three layout records
    out.sum().backward()
    av = a.numpy()
    want = (2 * av * m - 2 * av * m / (av * av + 1.0) ** 2).sum(axis=0)
    np.testing.assert_allclose(a.grad.numpy(), want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", sorted(OPS))
def test_replay_matches_eager_at_new_inputs(name):
    f = OPS[name]
    shapes = ((3, 1, W), (1, 2, W))

    def loss(a, b):
        return td.sum(td.sin(f(a, b)))

    step = td.value_and_grad(loss, argnums=(0, 1), replay=True)
    for seed in range(3):
        arrays = _inputs(shapes, seed)
        v, g = step(*[td.tensor(x) for x in arrays])
        ve, ge = td.value_and_grad(loss, argnums=(0, 1))(*[td.tensor(x) for x in arrays])
        np.testing.assert_allclose(float(v), float(ve), rtol=1e-13)
        for x, y in zip(g, ge):
            np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(OPS))
def test_forward_mode_matches_the_written_out_broadcast(name):
    f = OPS[name]
    shapes = ((2, 1, W), (2, 3, 1))
    primals = [td.tensor(a) for a in _inputs(shapes, 5)]
    tangents = [td.tensor(t) for t in _inputs(shapes, 6)]
    y1, t1 = td.jvp(f, primals, tangents)
    y2, t2 = td.jvp(_explicit(f), primals, tangents)
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), rtol=1e-14)
    np.testing.assert_allclose(t1.numpy(), t2.numpy(), rtol=1e-12, atol=1e-13)
    h = 1e-6
    up = f(*[p + h * t for p, t in zip(primals, tangents)]).numpy()
    down = f(*[p - h * t for p, t in zip(primals, tangents)]).numpy()
    np.testing.assert_allclose(t1.numpy(), (up - down) / (2 * h), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(OPS))
def test_second_order_matches_the_written_out_broadcast(name):
    """hvp (forward over reverse) and a recorded backward (create_graph) through layouts."""
    f = OPS[name]
    shapes = ((3, 1, W), (1, 2, W))
    primals = [td.tensor(a) for a in _inputs(shapes, 7)]
    tangents = [td.tensor(t) for t in _inputs(shapes, 8)]

    def scalar(g):
        return lambda a, b: td.sum(td.sin(g(a, b)))

    _, h1 = td.hvp(scalar(f), primals, tangents)
    _, h2 = td.hvp(scalar(_explicit(f)), primals, tangents)
    for x, y in zip(h1, h2):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-10, atol=1e-12)
    # d/dx of <grad, v> by a recorded backward
    results = []
    for g in (f, _explicit(f)):
        xs = [td.tensor(p.numpy(), requires_grad=True) for p in primals]
        with td.tape() as tp:
            grads = tp.gradient(scalar(g)(*xs), xs, create_graph=True)
            inner = sum(td.sum(d * t) for d, t in zip(grads, tangents))
        inner.backward()
        results.append([x.grad.numpy() for x in xs])
    for x, y in zip(*results):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    for x, y in zip(results[0], h1):
        np.testing.assert_allclose(x, y.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPS))
def test_against_pytorch(name):
    torch = pytest.importorskip("torch")
    tf = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
          "pow": torch.pow, "arctan2": torch.atan2, "hypot": torch.hypot}[name]
    shapes = ((4, 1, W), (1, 3, W))
    arrays = _inputs(shapes, 9)
    w = np.random.default_rng(10).normal(size=(4, 3, W))
    y, g = _grads(OPS[name], arrays, w)
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    (tf(*ts) * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(y, tf(*ts).detach().numpy(), rtol=1e-14)
    for a, t in zip(g, ts):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shapes, chunk", [
    (((3, 1, W), (1, 2, W)), W),  # both broadcast: chunks along the last axis
    (((2, W), (2, 1)), W),  # b one element per chunk (mask 0)
    (((W, W), (W,)), W),  # b repeated: its outer stride is 0
    (((2, 3, W), (2, 3, W)), None),  # same shapes: no layout
    (((2, W), (1,)), None),  # a single element: the mask alone
    (((W, 3), (W, 1)), None),  # chunks of 3: written out instead
])
def test_layout_payload(shapes, chunk):
    layout = broadcast_layout(*shapes, np.broadcast_shapes(*shapes))
    if chunk is None:
        assert layout is None
        return
    nd, length = layout[0], layout[1]
    assert length == chunk and len(layout) == 4 + 3 * nd
    # the payload addresses exactly NumPy's broadcast: every chunk element of each operand
    out = np.broadcast_shapes(*shapes)
    for j, s in enumerate(shapes):
        src = np.arange(np.prod(s)).reshape(s)
        want = np.broadcast_to(src, out).reshape(-1)
        got = []
        for t in range(int(np.prod(out)) // length):
            off = K.chunk_offsets(np.array([len(layout), *layout], np.int64), 0, t)[j]
            got.extend(off + (np.arange(length) if layout[2 + j] else np.zeros(length, int)))
        np.testing.assert_array_equal(src.reshape(-1)[got], want)


@pytest.mark.parametrize("name", sorted(OPS))
def test_one_slot_read_through_two_layouts(name):
    """x[:, None] (op) x: a reshape shares its input's slot, so one record reads one slot
    as both operands, broadcast two ways; both adjoints land in the same range."""
    x0 = _inputs(((W,),), 11)[0]
    x = td.tensor(x0, requires_grad=True)
    w = np.random.default_rng(12).normal(size=(W, W))
    (OPS[name](x.reshape(W, 1), x) * w).sum().backward()
    y = td.tensor(x0, requires_grad=True)
    (_explicit(OPS[name])(y.reshape(W, 1), y) * w).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), y.grad.numpy(), rtol=1e-12, atol=1e-13)
    assert gradcheck(lambda v: OPS[name](v.reshape(W, 1), v), [td.tensor(x0, requires_grad=True)])
