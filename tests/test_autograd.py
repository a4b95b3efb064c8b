"""Autograd semantics of tapediff: accumulation, graph release, grad modes, tapes, in-place
rules, conversions, reprs, dtypes and factories.

The reference is PyTorch's autograd (the library's stated model) plus the design rules of
the flat tape (one default tape per thread, ``with td.tape()`` blocks, cross-tape errors,
the tape's own copy of every recorded value).  Expected values are closed forms; where the
arithmetic is exact (small integers, dyadic fractions) the comparison is exact, so a rule
applied twice or not at all cannot hide in a tolerance.
"""
from __future__ import annotations


import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import tapediff as td

ERR_SECOND_BACKWARD = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward.")
ERR_LEAF_INPLACE = "a leaf Variable that requires grad is being used in an in-place operation."
ERR_FLOAT_ONLY = "Only Tensors of floating point and complex dtype can require gradients"
ERR_NONLEAF_RG = "you can only change requires_grad flags of leaf variables."

HYP = settings(max_examples=60, deadline=None,
               suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _clean_grad_mode():
    """Every test starts in grad mode and outside any tape block; a test that breaks grad
    mode fails itself (asserted below) without cascading into the tests after it."""
    assert td.is_grad_enabled()
    default = td.current_tape()
    yield
    leaked = td.is_grad_enabled()
    if not leaked:
        td.set_grad_enabled(True)
    assert leaked, "the test left grad mode disabled"
    assert td.current_tape() is default, "the test left a tape block open"


def g(t) -> np.ndarray:
    """A tensor's values (e.g. a ``.grad``) as a float64 ndarray, for comparisons."""
    assert t is not None, "expected a gradient, got None"
    return np.asarray(t.numpy(), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# accumulation and graph release
# ---------------------------------------------------------------------------------------------
def test_grad_accumulates_over_separate_backward_calls():
    x = td.tensor([1.0, -2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()  # 2x
    np.testing.assert_array_equal(g(x.grad), [2.0, -4.0, 6.0])
    (x * 3.0).sum().backward()  # + 3
    np.testing.assert_array_equal(g(x.grad), [5.0, -1.0, 9.0])
    td.sin(x).sum().backward()  # + cos x
    np.testing.assert_allclose(g(x.grad), np.array([5.0, -1.0, 9.0]) + np.cos([1.0, -2.0, 3.0]),
                               rtol=0, atol=1e-15)


def test_retain_graph_repeats_and_accumulates():
    x = td.tensor([0.5, 1.5, -2.0], requires_grad=True)
    z = (x * x * x).sum()  # dz/dx = 3x^2
    for _ in range(3):
        z.backward(retain_graph=True)
    np.testing.assert_array_equal(g(x.grad), 3 * 3 * np.array([0.25, 2.25, 4.0]))
    z.backward()  # a last, releasing sweep is still allowed
    np.testing.assert_array_equal(g(x.grad), 4 * 3 * np.array([0.25, 2.25, 4.0]))
    with pytest.raises(RuntimeError) as e:
        z.backward()
    assert str(e.value) == ERR_SECOND_BACKWARD


def test_second_backward_raises_and_leaves_grad_untouched():
    x = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    z = (x * 2).sum()
    z.backward()
    before = g(x.grad).copy()
    with pytest.raises(RuntimeError) as e:
        z.backward()
    assert str(e.value) == ERR_SECOND_BACKWARD
    np.testing.assert_array_equal(g(x.grad), before)
    # also with retain_graph=True: the graph is gone, asking to keep it changes nothing
    with pytest.raises(RuntimeError, match="second time"):
        z.backward(retain_graph=True)
    np.testing.assert_array_equal(g(x.grad), before)


def test_failed_backward_through_partly_released_graph_changes_no_grad():
    # z reaches a released sub-graph only after a fresh branch that also feeds w and v:
    # the failed sweep must not deliver the fresh branch's contribution to any leaf.
    w = td.tensor([1.0, 2.0], requires_grad=True)
    v = td.tensor([3.0, 4.0], requires_grad=True)
    a = (w * 2.0).sum()
    a.backward()
    np.testing.assert_array_equal(g(w.grad), [2.0, 2.0])
    assert v.grad is None
    z = (w * v).sum() + a
    with pytest.raises(RuntimeError) as e:
        z.backward()
    assert str(e.value) == ERR_SECOND_BACKWARD
    np.testing.assert_array_equal(g(w.grad), [2.0, 2.0])
    assert v.grad is None


def test_shared_intermediate_is_released_by_the_first_backward():
    # As in PyTorch: backward frees every non-leaf node it sweeps, shared ones included.
    x = td.tensor([1.0, 2.0], requires_grad=True)
    h = x * x
    g1 = h.sum()
    g2 = (h * 2.0).sum()
    g1.backward()
    with pytest.raises(RuntimeError, match="second time"):
        g2.backward()
    np.testing.assert_array_equal(g(x.grad), [2.0, 4.0])


def test_leaf_shared_by_two_graphs_keeps_them_independent():
    x = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y1 = (x * x).sum()  # 2x
    y2 = (x * 5.0).sum()  # 5
    y1.backward()  # releases y1's graph but never the leaf
    np.testing.assert_array_equal(g(x.grad), [2.0, 4.0, 6.0])
    y2.backward()
    np.testing.assert_array_equal(g(x.grad), [7.0, 9.0, 11.0])
    # a graph recorded after the first release also works
    (x * x * x).sum().backward()  # 3x^2
    np.testing.assert_array_equal(g(x.grad), [10.0, 21.0, 38.0])


def test_unreached_leaves_keep_grad_none():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    u = td.tensor([5.0, 6.0], requires_grad=True)
    other = (u * 2.0).sum()  # a graph on u that is never differentiated
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(g(x.grad), [3.0, 3.0])
    assert u.grad is None
    assert other.requires_grad


def test_tensors_not_requiring_grad_keep_grad_none():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    c = td.tensor([4.0, 5.0])  # constant operand
    k = td.tensor(3.0)
    y = (x * c + k).sum()
    y.backward()
    np.testing.assert_array_equal(g(x.grad), [4.0, 5.0])
    assert c.grad is None and k.grad is None
    with pytest.warns(UserWarning, match=r"not a leaf Tensor.*td\.no_grad\(\): w -= lr"):
        assert y.grad is None  # non-leaf results do not keep a .grad (no retain_grad)


def test_backward_on_tensor_that_does_not_require_grad_raises():
    c = td.tensor([1.0, 2.0])
    with pytest.raises(RuntimeError):
        c.sum().backward()
    with pytest.raises(RuntimeError):
        td.tensor(1.0).backward()


def test_backward_of_non_scalar_needs_gradient():
    x = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    with pytest.raises(RuntimeError) as e:
        (x * 2).backward()
    assert str(e.value) == "grad can be implicitly created only for scalar outputs"
    assert x.grad is None


def test_backward_of_one_element_tensor_needs_no_gradient():
    # PyTorch creates the implicit gradient for any one-element output, not only 0-d ones.
    x = td.tensor([2.0], requires_grad=True)
    (x * 3.0).backward()
    np.testing.assert_array_equal(g(x.grad), [3.0])


def test_backward_gradient_of_wrong_shape_names_both_shapes():
    x = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError) as e:
        y.backward(gradient=np.ones(2))
    msg = str(e.value)
    assert "(2,)" in msg and "(3,)" in msg, msg
    with pytest.raises(RuntimeError) as e:
        y.backward(gradient=td.ones(3, 1))
    msg = str(e.value)
    assert "(3, 1)" in msg and "(3,)" in msg, msg
    assert x.grad is None
    y.backward(gradient=td.tensor([1.0, 10.0, 100.0]))  # the graph survived the bad calls
    np.testing.assert_array_equal(g(x.grad), [2.0, 20.0, 200.0])


def test_backward_of_a_leaf_itself():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    x.backward(gradient=td.tensor([3.0, 4.0]))
    np.testing.assert_array_equal(g(x.grad), [3.0, 4.0])
    s = td.tensor(2.0, requires_grad=True)
    s.backward()
    assert s.grad.item() == 1.0


_floats = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)


@HYP
@given(data=st.data(), n=st.integers(1, 6), m=st.integers(1, 6))
def test_vjp_of_broadcast_product_matches_closed_form(data, n, m):
    # y[i, j] = sin(x[i]) * w[j] + x[i] * c[j];  v . dy/dx and v . dy/dw in closed form
    x0 = data.draw(arrays(np.float64, n, elements=_floats))
    w0 = data.draw(arrays(np.float64, m, elements=_floats))
    c0 = data.draw(arrays(np.float64, m, elements=_floats))
    v = data.draw(arrays(np.float64, (n, m), elements=_floats))
    x = td.tensor(x0, requires_grad=True)
    w = td.tensor(w0, requires_grad=True)
    y = td.sin(x[:, None]) * w[None, :] + x[:, None] * td.tensor(c0)
    assert y.shape == (n, m)
    np.testing.assert_allclose(g(y), np.sin(x0)[:, None] * w0 + x0[:, None] * c0,
                               rtol=1e-12, atol=1e-12)
    y.backward(gradient=td.tensor(v))
    np.testing.assert_allclose(g(x.grad), np.cos(x0) * (v @ w0) + v @ c0, rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(g(w.grad), np.sin(x0) @ v, rtol=1e-10, atol=1e-10)


@HYP
@given(x0=arrays(np.float64, st.integers(1, 8), elements=st.floats(0.1, 3.0)),
       data=st.data())
def test_vjp_of_elementwise_chain_matches_closed_form(x0, data):
    # y = exp(x) x / q with q = 1 + x^2:  dy/dx = exp(x) (x/q + 1/q - 2x^2/q^2)
    v = data.draw(arrays(np.float64, x0.shape, elements=_floats))
    x = td.tensor(x0, requires_grad=True)
    y = td.exp(x) * x / (x * x + 1.0)
    y.backward(gradient=v)
    q = 1.0 + x0 ** 2
    dydx = np.exp(x0) * (x0 / q + 1.0 / q - 2.0 * x0 ** 2 / q ** 2)
    np.testing.assert_allclose(g(x.grad), v * dydx, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# random interleavings of backward and grad resets against a model
# ---------------------------------------------------------------------------------------------
# Graphs over one leaf x (small integers, so every sum below is exact):
#   h  = x * 3            shared by g1 and g2
#   g1 = h.sum()          dg1/dx = 3          nodes {h, g1}
#   g2 = (h * h).sum()    dg2/dx = 18 x       nodes {h, hh, g2}
#   g3 = (x * c).sum()    dg3/dx = c          nodes {xc, g3}
# A backward fails (grad untouched) if it reaches a released node; otherwise it adds its
# contribution and, unless retain_graph, releases every node it reached.
_NODES = {"g1": {"h", "g1"}, "g2": {"h", "hh", "g2"}, "g3": {"xc", "g3"}}

_step = st.one_of(
    st.tuples(st.just("backward"), st.sampled_from(["g1", "g2", "g3"]), st.booleans()),
    st.tuples(st.just("reset")),
    st.tuples(st.just("rebuild")),
)


@HYP
@given(x0=arrays(np.float64, 3, elements=st.integers(-4, 4).map(float)),
       steps=st.lists(_step, max_size=25))
def test_backward_release_and_reset_interleavings_follow_model(x0, steps):
    c0 = np.array([1.0, -2.0, 0.5])
    x = td.tensor(x0, requires_grad=True)
    c = td.tensor(c0)

    def build():
        h = x * 3.0
        return {"g1": h.sum(), "g2": (h * h).sum(), "g3": (x * c).sum()}

    contrib = {"g1": np.full(3, 3.0), "g2": 18.0 * x0, "g3": c0}
    graphs = build()
    released: set = set()
    model = None  # the model's x.grad
    for step in steps:
        if step[0] == "reset":
            x.grad = None
            model = None
        elif step[0] == "rebuild":
            graphs = build()
            released = set()
        else:
            _, name, retain = step
            if _NODES[name] & released:
                with pytest.raises(RuntimeError) as e:
                    graphs[name].backward(retain_graph=retain)
                assert str(e.value) == ERR_SECOND_BACKWARD
            else:
                graphs[name].backward(retain_graph=retain)
                model = contrib[name].copy() if model is None else model + contrib[name]
                if not retain:
                    released |= _NODES[name]
        if model is None:
            assert x.grad is None
        else:
            np.testing.assert_array_equal(g(x.grad), model)


# ---------------------------------------------------------------------------------------------
# grad modes
# ---------------------------------------------------------------------------------------------
def test_no_grad_records_nothing():
    w = td.tensor([1.0, 2.0], requires_grad=True)
    tape = td.current_tape()
    n0 = len(tape)
    with td.no_grad():
        assert not td.is_grad_enabled()
        results = [w * 2, w + w, td.exp(w), w.sum(), w[0], w.mean(), 3.0 - w, w ** 2]
    assert td.is_grad_enabled()
    assert len(tape) == n0, "operations under no_grad must not record"
    for r in results:
        assert r.requires_grad is False and r.is_leaf and r.grad_fn is None
    np.testing.assert_array_equal(g(results[0]), [2.0, 4.0])


def test_no_grad_restores_mode_after_exception():
    with pytest.raises(ZeroDivisionError):
        with td.no_grad():
            raise ZeroDivisionError
    assert td.is_grad_enabled()


def test_enable_grad_inside_no_grad_records():
    w = td.tensor([1.0, 2.0], requires_grad=True)
    with td.no_grad():
        with td.enable_grad():
            assert td.is_grad_enabled()
            y = (w * w).sum()
        assert not td.is_grad_enabled()
        z = w * 2
    assert y.requires_grad and not y.is_leaf
    assert not z.requires_grad
    y.backward()
    np.testing.assert_array_equal(g(w.grad), [2.0, 4.0])


def test_set_grad_enabled_as_function():
    w = td.tensor([1.0, 2.0], requires_grad=True)
    try:
        td.set_grad_enabled(False)
        assert not td.is_grad_enabled()
        assert not (w * 2).requires_grad
        td.set_grad_enabled(True)
        assert td.is_grad_enabled()
        assert (w * 2).requires_grad
    finally:
        td.set_grad_enabled(True)


def test_set_grad_enabled_as_context_manager_restores_previous_mode():
    w = td.tensor([1.0, 2.0], requires_grad=True)
    with td.set_grad_enabled(False):
        assert not td.is_grad_enabled()
        assert not (w * 2).requires_grad
    assert td.is_grad_enabled()
    with td.no_grad():
        with td.set_grad_enabled(True):
            assert (w * 2).requires_grad
        assert not td.is_grad_enabled()  # back to the enclosing no_grad, not to "on"
        with td.set_grad_enabled(False):
            assert not td.is_grad_enabled()
        assert not td.is_grad_enabled()
    assert td.is_grad_enabled()


def test_no_grad_and_enable_grad_as_decorators():
    w = td.tensor([1.0, 2.0], requires_grad=True)

    @td.no_grad()
    def frozen(t):
        assert not td.is_grad_enabled()
        return t * 2

    @td.enable_grad()
    def recorded(t):
        return t * 2

    assert td.is_grad_enabled()  # decorating changes nothing by itself
    assert frozen.__name__ == "frozen"
    assert not frozen(w).requires_grad
    assert td.is_grad_enabled()
    with td.no_grad():
        assert recorded(w).requires_grad
        assert not td.is_grad_enabled()

    @td.no_grad()
    def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        boom()
    assert td.is_grad_enabled()


def test_set_grad_enabled_as_decorator_only_applies_inside_the_function():
    # PyTorch: decorating with set_grad_enabled(False) leaves the current mode alone; the
    # mode applies while the decorated function runs.
    try:
        @td.set_grad_enabled(False)
        def f():
            return td.is_grad_enabled()

        assert td.is_grad_enabled(), "decorating with set_grad_enabled(False) disabled grad"
        assert f() is False
        assert td.is_grad_enabled()
    finally:
        td.set_grad_enabled(True)


# ---------------------------------------------------------------------------------------------
# detach, is_leaf and requires_grad propagation
# ---------------------------------------------------------------------------------------------
def test_detach_is_a_leaf_with_same_values_and_stops_the_gradient():
    w = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = w * w
    d = y.detach()
    assert d.is_leaf and not d.requires_grad and d.grad is None and d.grad_fn is None
    np.testing.assert_array_equal(g(d), [1.0, 4.0, 9.0])
    z = (d * w).sum()  # dz/dw = d (treated as a constant), not 3 w^2
    z.backward()
    np.testing.assert_array_equal(g(w.grad), [1.0, 4.0, 9.0])
    assert d.grad is None
    y.sum().backward()  # y's own graph is untouched by the detach
    np.testing.assert_array_equal(g(w.grad), [3.0, 8.0, 15.0])


def test_detach_then_requires_grad_makes_a_fresh_leaf():
    w = td.tensor([1.0, 2.0], requires_grad=True)
    d = (w * 3.0).detach().requires_grad_()
    (d * d).sum().backward()
    np.testing.assert_array_equal(g(d.grad), [6.0, 12.0])
    assert w.grad is None


@pytest.mark.parametrize("rg_x,rg_y", [(False, False), (True, False), (False, True),
                                       (True, True)])
@pytest.mark.parametrize("op", [
    lambda x, y: x + y, lambda x, y: x * y, lambda x, y: x - y, lambda x, y: x / y,
    lambda x, y: x ** y, lambda x, y: y * 2.0 + x.sum(), lambda x, y: td.exp(x) * y[0],
], ids=["add", "mul", "sub", "div", "pow", "mixed", "exp-index"])
def test_result_requires_grad_iff_an_input_does(op, rg_x, rg_y):
    x = td.tensor([1.0, 2.0], requires_grad=rg_x)
    y = td.tensor([3.0, 0.5], requires_grad=rg_y)
    with td.tape() as tape:  # a fresh tape: no reclaim can shrink it in between
        n0 = len(tape)
        r = op(x, y)
        assert r.requires_grad is (rg_x or rg_y)
        assert r.is_leaf is not (rg_x or rg_y)
        assert (r.grad_fn is None) is not (rg_x or rg_y)
        assert (len(tape) > n0) is (rg_x or rg_y), "the tape grows iff something is recorded"
        n1 = len(tape)
        with td.no_grad():
            q = op(x, y)
        assert not q.requires_grad and q.is_leaf
        assert len(tape) == n1
    np.testing.assert_array_equal(g(q), g(r))


def test_is_leaf_for_constructed_tensors():
    assert td.tensor([1.0]).is_leaf
    assert td.tensor([1.0], requires_grad=True).is_leaf
    assert td.zeros(2, requires_grad=True).is_leaf
    x = td.tensor([1.0], requires_grad=True)
    assert not (x + 1).is_leaf
    assert (td.tensor([1.0]) + 1).is_leaf


def test_requires_grad_only_for_floats():
    for make in (lambda: td.tensor([1, 2, 3], requires_grad=True),
                 lambda: td.tensor([True, False], requires_grad=True),
                 lambda: td.arange(3, requires_grad=True),
                 lambda: td.zeros(2, dtype=td.int32, requires_grad=True)):
        with pytest.raises(RuntimeError) as e:
            make()
        assert str(e.value) == ERR_FLOAT_ONLY
    i = td.tensor([1, 2, 3])
    with pytest.raises(RuntimeError) as e:
        i.requires_grad = True
    assert str(e.value) == ERR_FLOAT_ONLY
    with pytest.raises(RuntimeError) as e:
        i.requires_grad_()
    assert str(e.value) == ERR_FLOAT_ONLY
    assert i.requires_grad is False
    i.requires_grad = False  # turning it off is fine
    assert td.tensor([1.0], dtype=td.float32, requires_grad=True).requires_grad
    assert td.tensor([1.0], dtype=td.float16, requires_grad=True).requires_grad


def test_requires_grad_false_on_non_leaf_raises():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError) as e:
        y.requires_grad = False
    assert str(e.value).startswith(ERR_NONLEAF_RG)
    with pytest.raises(RuntimeError) as e:
        y.requires_grad_(False)
    assert str(e.value).startswith(ERR_NONLEAF_RG)
    assert y.requires_grad


def test_requires_grad_toggle_on_leaf_controls_recording():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    x.requires_grad = False
    assert not (x * 2).requires_grad
    x.requires_grad_(True)
    (x * 2).sum().backward()
    np.testing.assert_array_equal(g(x.grad), [2.0, 2.0])


# ---------------------------------------------------------------------------------------------
# tapes
# ---------------------------------------------------------------------------------------------
def test_tape_nesting_and_current_tape():
    default = td.current_tape()
    assert isinstance(default, td.Tape)
    assert td.current_tape() is default  # stable outside blocks
    with td.tape() as outer:
        assert td.current_tape() is outer and outer is not default
        with td.tape() as inner:
            assert td.current_tape() is inner and inner is not outer
        assert td.current_tape() is outer
    assert td.current_tape() is default
    with pytest.raises(KeyError):  # an exception inside a block still closes it
        with td.tape():
            raise KeyError("x")
    assert td.current_tape() is default


def test_innermost_tape_records():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    default = td.current_tape()
    nd = len(default)
    with td.tape() as outer:
        y = (x * 2.0).sum()
        n_outer = len(outer)
        assert n_outer == 3  # the leaf's value, the product, the sum
        with td.tape() as inner:
            z = (x * 3.0).sum()
            assert len(inner) == 3
        assert len(outer) == n_outer
    assert len(default) == nd
    y.backward()
    z.backward()
    np.testing.assert_array_equal(g(x.grad), [5.0, 5.0])


def test_len_counts_records():
    x = td.tensor(2.0, requires_grad=True)
    c = td.tensor(4.0)
    with td.tape() as t:
        assert len(t) == 0
        y = x * x + 1.0  # leaf, product, sum with a constant
        assert len(t) == 3
        z = y * c  # + the constant tensor's value, + the product
        assert len(t) == 5
        with td.no_grad():
            y * 7.0
        assert len(t) == 5
        w = z * x  # the leaf's record is reused
        assert len(t) == 6
    w.backward()  # w = (x^2 + 1) * 4 * x = 4x^3 + 4x -> 12 x^2 + 4 = 52
    assert x.grad.item() == 52.0


def test_nbytes_positive_and_grows_with_the_graph():
    with td.tape() as t:
        assert t.nbytes > 0
        small = t.nbytes
        x = td.tensor(np.ones(100_000), requires_grad=True)
        y = td.sin(x) * 2.0 + x
        assert t.nbytes >= small + 3 * 100_000 * 8  # three values of 100k float64s at least
    assert t.nbytes > 0
    del y


def test_backward_after_the_tape_block_closed():
    x = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    with td.tape():
        y = (x * x).sum()
    y.backward()  # the tensor keeps its tape
    np.testing.assert_array_equal(g(x.grad), [2.0, 4.0, 6.0])


def test_backward_after_the_tape_object_is_unreferenced():
    import gc
    x = td.tensor([1.0, 2.0], requires_grad=True)

    def make():
        with td.tape():
            return (x * 4.0).sum()

    y = make()
    gc.collect()
    y.backward()
    np.testing.assert_array_equal(g(x.grad), [4.0, 4.0])


def test_tensor_from_outer_tape_used_in_inner_block_raises():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0  # recorded on the default tape
    with td.tape():
        with pytest.raises(RuntimeError):
            y + 1.0
        with pytest.raises(RuntimeError):
            y * x
        ok = x * 3.0  # a leaf is not recorded anywhere: it can be used on any tape
    with td.tape():
        u = x + 1.0
        with td.tape():
            with pytest.raises(RuntimeError):
                u * 2.0
    with pytest.raises(RuntimeError):  # and back out: the inner tensor on the default tape
        ok * 2.0
    # detach takes a value across tapes
    with td.tape():
        v = (y.detach() * x).sum()
    v.backward()
    np.testing.assert_array_equal(g(x.grad), [2.0, 4.0])


def test_cross_tape_operation_under_no_grad_is_allowed():
    # nothing records, so nothing mixes tapes
    x = td.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    with td.tape():
        with td.no_grad():
            z = y + 1.0
    np.testing.assert_array_equal(g(z), [3.0, 5.0])


# ---------------------------------------------------------------------------------------------
# the tape keeps its own copy of values
# ---------------------------------------------------------------------------------------------
def test_mutating_the_source_array_changes_nothing():
    src = np.array([1.0, 2.0, 3.0])
    x = td.tensor(src, requires_grad=True)
    y = (x * x).sum()
    src[:] = 100.0
    np.testing.assert_array_equal(g(x), [1.0, 2.0, 3.0])
    y.backward()
    np.testing.assert_array_equal(g(x.grad), [2.0, 4.0, 6.0])


def test_mutating_a_constant_operand_array_after_recording_changes_nothing():
    x = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    c = np.array([4.0, 5.0, 6.0])
    y = x * c
    z = (y * y).sum()  # dz/dx = 2 x c^2
    c[:] = -1.0
    np.testing.assert_array_equal(g(y), [4.0, 10.0, 18.0])
    z.backward()
    np.testing.assert_array_equal(g(x.grad), [32.0, 100.0, 216.0])


def test_mutating_numpy_copies_changes_nothing():
    x = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    h = x * x
    y = (h * x).sum()  # x^3 -> 3x^2
    for t in (x, h, y):
        a = t.numpy()
        a[...] = -7.0  # a copy: neither the tensor nor the tape may see this
    np.testing.assert_array_equal(g(x), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(g(h), [1.0, 4.0, 9.0])
    assert y.item() == 36.0
    y.backward()
    np.testing.assert_array_equal(g(x.grad), [3.0, 12.0, 27.0])
    a = x.grad.numpy()
    a[...] = 0.0
    np.testing.assert_array_equal(g(x.grad), [3.0, 12.0, 27.0])


def test_writing_into_np_asarray_never_changes_a_recorded_value():
    # np.asarray(t) may be a read-only view or a copy; either way a write through it must
    # not reach the tape, whose values the backward sweep reads (d(h*x)/dx reads h).
    x = td.tensor([1.0, 2.0], requires_grad=True)
    h = x * x
    z = (h * x).sum()  # x^3
    with td.no_grad():  # (with grad mode on, np.asarray refuses a tensor that requires grad)
        view = np.asarray(h)
    try:
        view[...] = 100.0
    except ValueError:
        pass  # read-only: fine
    np.testing.assert_array_equal(g(h), [1.0, 4.0])
    z.backward()
    np.testing.assert_array_equal(g(x.grad), [3.0, 12.0])


def test_writing_into_np_asarray_of_a_leaf_keeps_value_and_gradient_consistent():
    # If np.asarray(leaf) is writable, the write is an update of the leaf: a graph recorded
    # afterwards must differentiate at the value it computed with.
    x = td.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum()  # x's value is now on the tape
    with td.no_grad():  # (with grad mode on, np.asarray refuses a tensor that requires grad)
        view = np.asarray(x)
    try:
        view[...] = [5.0, 7.0]
    except ValueError:
        pass  # read-only: fine
    now = g(x).copy()
    y = (x * x).sum()
    assert y.item() == float((now * now).sum())
    y.backward()
    np.testing.assert_array_equal(g(x.grad), 2.0 * now)


# ---------------------------------------------------------------------------------------------
# in-place updates
# ---------------------------------------------------------------------------------------------
def test_inplace_on_leaf_requiring_grad_raises_in_grad_mode():
    w = td.tensor([1.0, 2.0], requires_grad=True)
    for upd in (lambda: w.__isub__(1.0), lambda: w.__iadd__(1.0), lambda: w.__imul__(2.0),
                lambda: w.__itruediv__(2.0), lambda: w.__setitem__(0, 5.0)):
        with pytest.raises(RuntimeError) as e:
            upd()
        assert str(e.value) == ERR_LEAF_INPLACE
    np.testing.assert_array_equal(g(w), [1.0, 2.0])
    with pytest.raises(RuntimeError) as e:
        w -= 1.0
    assert str(e.value) == ERR_LEAF_INPLACE


def test_inplace_on_recorded_tensor_records_functionally():
    # y += 1; y *= 2; y[0] = 5 on y = 2w: y = [5, 2 * (2 w1 + 1)], earlier uses keep 2w
    w = td.tensor([1.0, 2.0], requires_grad=True)
    y = w * 2.0
    before = y.sum()
    same = y
    y += 1.0
    y *= 2.0
    y[0] = 5.0
    assert y is same and not y.is_leaf
    np.testing.assert_array_equal(g(y), [5.0, 10.0])
    y.sum().backward(retain_graph=True)  # the record of 2w is shared with `before`
    np.testing.assert_array_equal(g(w.grad), [0.0, 4.0])
    w.grad = None
    before.backward()
    np.testing.assert_array_equal(g(w.grad), [2.0, 2.0])


def test_inplace_on_recorded_tensor_under_no_grad_raises():
    w = td.tensor([1.0, 2.0], requires_grad=True)
    y = w * 2.0
    for upd in (lambda: y.__iadd__(1.0), lambda: y.__setitem__(0, 5.0)):
        with td.no_grad(), pytest.raises(RuntimeError, match="under no_grad of a tensor"):
            upd()
    np.testing.assert_array_equal(g(y), [2.0, 4.0])


def test_inplace_update_under_no_grad_and_graph_versions():
    w = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    old = (w * w).sum()  # recorded with w = [1, 2, 3]
    with td.no_grad():
        w -= 0.5 * td.tensor([2.0, 2.0, 2.0])
    assert w.is_leaf and w.requires_grad
    np.testing.assert_array_equal(g(w), [0.0, 1.0, 2.0])
    new = (w * w).sum()  # later graphs see the new value
    assert new.item() == 5.0
    new.backward()
    np.testing.assert_array_equal(g(w.grad), [0.0, 2.0, 4.0])
    w.grad = None
    old.backward()  # the earlier graph still differentiates with the old value
    assert old.item() == 14.0
    np.testing.assert_array_equal(g(w.grad), [2.0, 4.0, 6.0])


def test_inplace_update_of_scalar_leaf():
    w = td.tensor(3.0, requires_grad=True)
    y = w * w
    with td.no_grad():
        w -= 1.0
        w *= 2.0
    assert w.item() == 4.0
    (w * w).backward()
    assert w.grad.item() == 8.0
    y.backward()
    assert w.grad.item() == 14.0


def test_gradient_descent_solves_least_squares():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(30, 3))
    b = A @ np.array([1.5, -2.0, 0.5]) + 0.1 * rng.normal(size=30)
    expected = np.linalg.lstsq(A, b, rcond=None)[0]
    At, bt = td.tensor(A), td.tensor(b)
    w = td.tensor(np.zeros(3), requires_grad=True)
    lr = 0.3
    losses = []
    for step in range(300):
        pred = (At * w).sum(axis=1)  # A @ w by broadcasting
        loss = ((pred - bt) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        with td.no_grad():
            w -= lr * w.grad
        if step % 2:
            w.grad = None  # both ways of resetting
        else:
            w.grad.zero_()
    np.testing.assert_allclose(g(w), expected, atol=1e-8)
    assert losses[-1] <= losses[0] / 10
    assert all(b_ <= a_ + 1e-12 for a_, b_ in zip(losses, losses[1:]))


def test_grad_reset_to_none_restarts_accumulation():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    (x * 5.0).sum().backward()
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(g(x.grad), [10.0, 10.0])
    x.grad = None
    (x * x).sum().backward()
    np.testing.assert_array_equal(g(x.grad), [2.0, 4.0])


def test_grad_zero_keeps_the_grad_tensor_and_accumulates_into_it():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    (x * 5.0).sum().backward()
    x.grad.zero_()
    np.testing.assert_array_equal(g(x.grad), [0.0, 0.0])
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(g(x.grad), [2.0, 2.0])


# ---------------------------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------------------------
def test_item_and_float():
    x = td.tensor(2.5, requires_grad=True)
    y = x * 2.0
    assert y.item() == 5.0 and type(y.item()) is float
    assert float(y) == 5.0
    assert td.tensor([7.0]).item() == 7.0
    assert td.tensor(3).item() == 3 and type(td.tensor(3).item()) is int
    assert float(td.tensor([[1.5]])) == 1.5
    with pytest.raises(RuntimeError):
        td.tensor([1.0, 2.0]).item()
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        float(td.tensor([1.0, 2.0]))


def test_len_and_bool():
    assert len(td.tensor([1.0, 2.0, 3.0])) == 3
    assert len(td.zeros(4, 2)) == 4
    with pytest.raises(TypeError) as e:
        len(td.tensor(5.0))
    assert str(e.value) == "len() of a 0-d tensor"
    with pytest.raises(TypeError):
        len(td.tensor(np.array(5, np.int64)))
    with pytest.raises(RuntimeError):
        bool(td.tensor([1.0, 2.0]))
    assert bool(td.tensor([1.0])) is True
    assert bool(td.tensor(0.0)) is False


# ---------------------------------------------------------------------------------------------
# reprs, dtypes, factories
# ---------------------------------------------------------------------------------------------
def test_reprs():
    assert repr(td.tensor(5.0)) == "tensor(5.)"
    assert repr(td.tensor([2.0, 2.0, 2.0])) == "tensor([2., 2., 2.])"
    assert repr(td.tensor([0.1, 0.2, 0.3], requires_grad=True)) == (
        "tensor([0.1000, 0.2000, 0.3000], requires_grad=True)")
    assert repr(td.tensor([1.0, 2.5], dtype=td.float32)) == (
        "tensor([1.0000, 2.5000], dtype=float32)")
    x = td.tensor([1.0, 2.0], requires_grad=True)
    assert repr(x * 2) == "tensor([2., 4.], grad_fn=<MulBackward0>)"
    assert repr(x * x) == "tensor([1., 4.], grad_fn=<MulBackward0>)"
    assert repr(x + 1) == "tensor([2., 3.], grad_fn=<AddBackward0>)"
    assert repr(td.tensor([1, 2, 3])) == "tensor([1, 2, 3])"
    assert repr(td.tensor(True)) == "tensor(True)"
    with td.no_grad():
        assert repr(x * 2) == "tensor([2., 4.])"


def test_repr_of_grad():
    x = td.tensor(2.0, requires_grad=True)
    (x * 5.0).backward()
    assert repr(x.grad) == "tensor(5.)"
    y = td.tensor([1.0, 2.0], dtype=td.float32, requires_grad=True)
    (y * 3.0).sum().backward()
    assert repr(y.grad) == "tensor([3., 3.], dtype=float32)"
    assert y.grad.dtype == np.float32


@pytest.mark.parametrize("data,dtype", [
    (1.5, np.float64), ([1.0, 2.0], np.float64), ([1, 2.5], np.float64),
    (3, np.int64), ([1, 2], np.int64), (True, np.bool_), ([True, False], np.bool_),
    (np.array([1.0, 2.0], np.float32), np.float32), (np.float32(1.0), np.float32),
    (np.array([1, 2], np.int32), np.int32),
])
def test_dtype_defaults(data, dtype):
    assert td.tensor(data).dtype == np.dtype(dtype)


def test_dtypes_are_kept_through_recorded_operations():
    x = td.tensor([1.0, 2.0], dtype=td.float32, requires_grad=True)
    y = x * 2.0 + 1.0
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32
    assert td.tensor([1.0], dtype="float32").dtype == np.float32


def test_factories():
    z = td.zeros(2, 3)
    assert z.shape == (2, 3) and z.dtype == np.float64 and not z.requires_grad
    assert (g(z) == 0).all()
    assert td.zeros((2, 3)).shape == (2, 3)
    assert td.zeros([4]).shape == (4,)
    o = td.ones(4, dtype=td.float32, requires_grad=True)
    assert o.shape == (4,) and o.dtype == np.float32 and o.requires_grad and o.is_leaf
    assert (g(o) == 1).all()
    f = td.full((2, 2), 7.5)
    assert f.dtype == np.float64 and (g(f) == 7.5).all()
    assert td.full((3,), 7).dtype == np.int64
    assert td.full((2,), 1.0, requires_grad=True).requires_grad
    a = td.arange(5)
    assert a.dtype == np.int64 and a.tolist() == [0, 1, 2, 3, 4]
    b = td.arange(0.0, 1.0, 0.25, requires_grad=True)
    assert b.dtype == np.float64 and b.tolist() == [0.0, 0.25, 0.5, 0.75] and b.requires_grad
    assert td.arange(2, 8, 3).tolist() == [2, 5]
    src = td.tensor([[1.0, 2.0]], dtype=td.float32, requires_grad=True)
    zl = td.zeros_like(src)
    assert zl.shape == (1, 2) and zl.dtype == np.float32 and not zl.requires_grad
    ol = td.ones_like(src, requires_grad=True)
    assert ol.dtype == np.float32 and ol.requires_grad and (g(ol) == 1).all()
    assert td.ones_like(td.arange(3)).dtype == np.int64
    assert td.zeros_like(src, dtype=td.float64).dtype == np.float64
    # factories make independent leaves that differentiate normally
    p = td.ones(3, requires_grad=True)
    (p * td.arange(3)).sum().backward()
    np.testing.assert_array_equal(g(p.grad), [0.0, 1.0, 2.0])


@pytest.mark.parametrize("shape", [(), (3,)])
def test_grad_accumulated_in_place_after_being_recorded_is_recorded_again(shape):
    # .grad is updated in place by the next backward; a tape that recorded its old value as
    # a constant must record the new one, not reuse the stale record
    x = td.tensor(np.full(shape, 2.0), requires_grad=True)
    (x * x).sum().backward()  # x.grad = 4
    with td.tape():
        y = (x * x.grad).sum()  # records x.grad = 4 as a constant
        (x * x).sum().backward()  # x.grad = 8, in place
        z = (x * x.grad).sum()
        np.testing.assert_allclose(z.item(), 16.0 * max(1, np.prod(shape)))
        z.backward()
        np.testing.assert_allclose(np.asarray(x.grad), np.full(shape, 16.0))
    assert y.item() == 8.0 * max(1, np.prod(shape))


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="notes need Python 3.11")
@pytest.mark.parametrize("mistake,message,hint", [
    (lambda: td.tensor([1, 2], requires_grad=True), ERR_FLOAT_ONLY, "float dtype"),
    (lambda: (td.tensor([1.0, 2.0], requires_grad=True) * 2).backward(),
     "grad can be implicitly created only for scalar outputs", "y.sum().backward()"),
    (lambda: td.tensor([1.0], requires_grad=True).__isub__(1.0), ERR_LEAF_INPLACE,
     "td.no_grad()"),
], ids=["int requires_grad", "non-scalar backward", "in-place on a leaf"])
def test_pytorch_messages_carry_a_hint_naming_the_fix(mistake, message, hint):
    # str(e) stays PyTorch's word for word; the fix is a note the traceback shows
    with pytest.raises(RuntimeError) as e:
        mistake()
    assert str(e.value) == message
    assert any(hint in note for note in e.value.__notes__)


def test_first_compile_is_announced_once(capsys):
    # a kernel without a valid on-disk cache entry is announced on stderr before it compiles
    from tapediff._src import _tape

    class Uncached:
        class _cache:
            class _cache_file:
                @staticmethod
                def _load_index():
                    return {}

    kernel = Uncached()
    _tape.notice_compile(kernel, "the test kernel", 4)
    _tape.notice_compile(kernel, "the test kernel", 4)
    err = capsys.readouterr().err
    assert err.count("tapediff: compiling the test kernel for this machine, once (about 4 s") == 1
    cached = Uncached()
    cached._cache = type("C", (), {"_cache_file": type("F", (), {
        "_load_index": staticmethod(lambda: {"sig": 1})})})
    _tape.notice_compile(cached, "a cached kernel", 4)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("make", [lambda a: td.tensor(a, requires_grad=True),
                                  lambda a: td.tensor(a).requires_grad_()],
                         ids=["tensor(requires_grad)", "requires_grad_()"])
def test_fortran_ordered_and_strided_arrays_keep_their_gradients_in_place(make):
    # views compute strides for C order: a leaf holding a Fortran-ordered or strided array
    # once sent x[:, 0]'s gradient to the wrong elements
    w = np.array([1.0, 10.0, 100.0])
    for a in (np.arange(6.0).reshape(2, 3).T, np.arange(12.0).reshape(3, 4)[:, ::2]):
        x = make(a)
        (x[:, 0] * w).sum().backward()
        expected = np.zeros(a.shape)
        expected[:, 0] = w
        np.testing.assert_array_equal(x.grad.numpy(), expected)
        # an ndarray operand in Fortran order, through a recorded view
        t = td.tensor([1.0, 2.0], requires_grad=True)
        (np.asfortranarray(a) * t)[:, 1].sum().backward()
        np.testing.assert_array_equal(t.grad.numpy(), [0.0, a[:, 1].sum()])
