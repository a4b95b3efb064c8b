"""The jitted sweep against an independent NumPy interpreter of the same records.

Programs are drawn by hypothesis from the expressions below, composed on random inputs;
for each, the tape's records are swept by tests/reference_sweep.py and by tapediff's
backward, and every leaf's gradient must agree.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import tapediff as td

from reference_sweep import reference_grads

# steps: (name, function of the running value v and the leaves x, y), all kept in domain
STEPS = [
    ("mul", lambda v, x, y: v * y), ("add", lambda v, x, y: v + x),
    ("div", lambda v, x, y: v / (y * y + 1.0)), ("sub_c", lambda v, x, y: 2.0 - v),
    ("tanh", lambda v, x, y: td.tanh(v)), ("sin", lambda v, x, y: td.sin(v)),
    ("exp", lambda v, x, y: td.exp(td.tanh(v))), ("log", lambda v, x, y: td.log(v * v + 1.0)),
    ("sqrt", lambda v, x, y: td.sqrt(v * v + 0.5)), ("pow", lambda v, x, y: (v * v + 1.0) ** y),
    ("square", lambda v, x, y: v ** 2), ("sigmoid", lambda v, x, y: td.sigmoid(v)),
    ("softplus", lambda v, x, y: td.softplus(v)), ("arctan2", lambda v, x, y: td.arctan2(v, y + 3.0)),
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
    ("f32", lambda v, x, y: (v.astype(np.float32) * 2.0).astype(np.float64)),
]


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.sampled_from(range(len(STEPS))), min_size=1, max_size=6),
       seed=st.integers(0, 2 ** 16))
def test_jitted_sweep_matches_the_reference_interpreter(steps, seed):
    rng = np.random.default_rng(seed)
    x = td.tensor(rng.uniform(-1, 1, (3, 4)), requires_grad=True)
    y = td.tensor(rng.uniform(-1, 1, (3, 4)), requires_grad=True)
    with td.tape() as t:
        v = x
        for k in steps:
            v = STEPS[k][1](v, x, y)
        out = (v * rng.normal(size=v.shape)).sum()
        ref = reference_grads(t, out._slot, np.ones(1))
        out.backward()
        for leaf in (x, y):
            used = leaf._lc is not None and leaf._lc[0]() is t  # the leaf's record is here
            expected = ref.get(leaf._lc[1]) if used else None
            if expected is None:
                assert leaf.grad is None or not np.any(leaf.grad.numpy()), [STEPS[k][0] for k in steps]
                continue
            f32 = any(STEPS[k][0] == "f32" for k in steps)  # adjoints of float32 records
            np.testing.assert_allclose(leaf.grad.numpy().reshape(-1), expected,
                                       rtol=1e-5 if f32 else 1e-9, atol=1e-6 if f32 else 1e-12,
                                       err_msg=str([STEPS[k][0] for k in steps]))
