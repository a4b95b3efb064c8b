"""``gradcheck`` and ``gradgradcheck``: compare tapediff's first and second derivatives with
central finite differences."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

import tapediff as td

__all__ = ["GradcheckError", "gradcheck", "gradgradcheck", "GRADCHECK_DEFAULTS"]

_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)

#: Default (eps, atol, rtol) per dtype.  float64 uses PyTorch's gradcheck defaults.  float32
#: has about 7 significant digits: a central difference with step h carries a rounding error
#: of roughly 1e-7 * |f| / h, so the step is 1e-3 (relative, see ``gradcheck``) and the
#: tolerances are 1e-2.  Any other dtype is checked with the float32 values.
GRADCHECK_DEFAULTS: dict[np.dtype, tuple[float, float, float]] = {
    _F64: (1e-6, 1e-5, 1e-3),
    _F32: (1e-3, 1e-2, 1e-2),
}

# Non-scalar outputs are reduced with this many fixed random weight arrays.  Three
# projections make a wrong gradient that happens to be orthogonal to one weight array
# (a cancellation) vanishingly unlikely to pass all of them.
_N_PROJECTIONS = 3
_SEED = 20240601


class GradcheckError(RuntimeError):
    """Raised by ``gradcheck`` when an analytical gradient disagrees with the numerical one.

    The message names the output (and projection), the input, the worst element with both
    values and the error, then prints both gradients in full.  The same facts are kept as
    attributes for programmatic use; those that do not apply (a gradient of the wrong shape
    has no worst element) are None.

    >>> import tapediff as td
    >>> from tapediff.testing import GradcheckError, gradcheck
    >>> x = td.tensor([3.0], requires_grad=True)
    >>> try:
    ...     gradcheck(lambda x: (x * x.detach()).sum(), x)
    ... except GradcheckError as e:
    ...     print(e.input_index, e.element, e.analytical, round(e.numerical, 6))
    0 (0,) 3.0 6.0
    """

    def __init__(self, message: str, *, output_index: int | None = None,
                 projection: int | None = None, input_index: int | None = None,
                 element: tuple | None = None, analytical: float | None = None,
                 numerical: float | None = None) -> None:
        super().__init__(message)
        self.output_index = output_index
        self.projection = projection
        self.input_index = input_index
        self.element = element
        self.analytical = analytical
        self.numerical = numerical


def _as_inputs(inputs: Any) -> tuple[list, list[int]]:
    """The argument list passed to ``fn`` and the indices of the differentiable arguments.

    A float ndarray (an int ndarray is converted to float64) becomes a float tensor that
    requires grad; a tensor is differentiable when it requires grad; anything else is
    passed through unchanged."""
    if isinstance(inputs, (td.Tensor, np.ndarray)):
        inputs = (inputs,)
    args = list(inputs)
    checked = []
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray):
            dt = a.dtype if a.dtype.kind == "f" else _F64
            args[i] = td.tensor(np.array(a, dtype=dt), requires_grad=True)
            checked.append(i)
        elif isinstance(a, td.Tensor) and a.requires_grad:
            checked.append(i)
    if not checked:
        raise ValueError("gradcheck expects at least one input tensor that requires grad "
                         "(or a float ndarray)")
    return args, checked


def _as_outputs(out: Any) -> tuple:
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    for j, o in enumerate(outs):
        if not isinstance(o, td.Tensor):
            raise TypeError(f"gradcheck: fn must return a Tensor or a tuple of Tensors; "
                            f"output {j} is a {type(o).__name__}")
        if o.dtype.kind != "f":
            raise TypeError(f"gradcheck: output {j} has dtype {o.dtype}; only floating-point "
                            f"outputs can be differentiated")
    return outs


def _values(t: td.Tensor) -> np.ndarray:
    return np.array(t.numpy(), dtype=_F64)


def _weights(shape: tuple, out_index: int, k: int) -> np.ndarray:
    """Projection ``k`` of output ``out_index``: magnitudes in [0.5, 1.5] with random signs, so
    that every output element weighs in every projection (none is nearly zero) and elements
    are told apart (a gradient routed to the wrong element changes the result)."""
    rng = np.random.default_rng([_SEED, out_index, k])
    return rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def _fresh(args: list, checked: list[int], arrays: dict) -> list:
    """``args`` with each checked input replaced by a new leaf holding ``arrays[i]``."""
    call = list(args)
    for i in checked:
        call[i] = td.tensor(arrays[i], requires_grad=True)
    return call


def _fail(raise_exception: bool, message: str, **facts: Any) -> bool:
    if raise_exception:
        raise GradcheckError(message, **facts)
    return False


def _fmt(a: np.ndarray) -> str:
    return np.array2string(a, precision=10, threshold=200, max_line_width=100)


def gradcheck(fn: Callable[..., Any], inputs: Any, *, eps: float | None = None,
              atol: float | None = None, rtol: float | None = None,
              raise_exception: bool = True) -> bool:
    """Check the gradients tapediff computes for ``fn`` against central finite differences.

    ``inputs`` is a tensor, an ndarray, or a sequence of them (other values, e.g. Python
    numbers, are passed to ``fn`` unchanged).  The differentiable inputs are the tensors that
    require grad and the float ndarrays (an int ndarray is taken as float64); ``fn`` receives
    them as tensors.  ``fn`` returns a floating-point Tensor, or a tuple of them.

    What is checked, for every output ``out`` and every differentiable input ``x``:

    * a one-element output: the gradient d out / d x;
    * any other output: d sum(w * out) / d x for 3 fixed random weight arrays ``w`` of
      ``out``'s shape (entries of magnitude 0.5 to 1.5 with random signs, the same on every
      call), i.e. vector-Jacobian products in 3 directions rather than the full Jacobian.

    The analytical side calls ``fn`` on fresh leaf copies of the inputs (grad mode on, on
    the current tape) and runs ``out.backward(gradient=w)``; it must give each copy a
    ``.grad`` of the input's shape and dtype (no ``.grad`` at all counts as zero).  The
    numerical side evaluates ``fn`` under ``td.no_grad()`` on perturbed copies of the
    inputs: element x_k is moved to x_k + h and x_k - h with h = eps * max(1, |x_k|), and
    the quotient uses the step as actually represented in the input's dtype.  An element
    passes when |analytical - numerical| <= atol + rtol * |numerical| (NaN never passes).

    Defaults (``GRADCHECK_DEFAULTS``), chosen by the least precise dtype among the
    differentiable inputs and the outputs: float64 eps=1e-6, atol=1e-5, rtol=1e-3 (PyTorch's
    defaults); float32 eps=1e-3, atol=1e-2, rtol=1e-2.

    The user's tensors are never differentiated, so their ``.grad`` is left as it was.
    Tensors that ``fn`` captures from its surroundings (rather than receiving them through
    ``inputs``) do take part in the backward passes: pass them in ``inputs`` instead, or
    detach them.  Exceptions raised by ``fn`` propagate.

    Cost: two evaluations of ``fn`` per element of the differentiable inputs, plus one
    forward and backward pass per projection; meant for small inputs.

    Returns True when every gradient matches.  On a mismatch, raises ``GradcheckError``
    naming the output, the projection, the input, the worst element, both values and the
    error; or returns False when ``raise_exception`` is False.

    >>> import tapediff as td
    >>> from tapediff.testing import gradcheck
    >>> x = td.tensor([0.5, 1.0, 2.0], requires_grad=True)
    >>> y = td.tensor([[1.0], [3.0]], requires_grad=True)
    >>> gradcheck(lambda x, y: td.sin(x) * y, (x, y))  # a (2, 3) output
    True
    >>> gradcheck(lambda x: x.detach() * x, x, raise_exception=False)
    False
    """
    args, checked = _as_inputs(inputs)
    # Working copies in the inputs' own dtypes: the numerical side perturbs these.
    arrays = {i: np.array(args[i].numpy()) for i in checked}

    # Output shapes and dtypes come from an unperturbed no-grad evaluation, which is also
    # the reference point every perturbation is compared against.
    with td.no_grad():
        base = _as_outputs(fn(*_fresh(args, checked, arrays)))
    dtypes = [arrays[i].dtype for i in checked] + [o.dtype for o in base]
    least = min(dtypes, key=lambda d: np.finfo(d).bits)
    d_eps, d_atol, d_rtol = GRADCHECK_DEFAULTS.get(least, GRADCHECK_DEFAULTS[_F32])
    eps = d_eps if eps is None else float(eps)
    atol = d_atol if atol is None else float(atol)
    rtol = d_rtol if rtol is None else float(rtol)

    # Projections: (output index, projection number or None for a one-element output, w).
    projections = []
    for j, o in enumerate(base):
        if o.size == 1:
            projections.append((j, None, np.ones(o.shape)))
        else:
            projections += [(j, k, _weights(o.shape, j, k)) for k in range(_N_PROJECTIONS)]

    # Analytical: one forward and one backward per projection, each on fresh leaves, so no
    # backward accumulates into another's gradient (or into the user's tensors).
    analytical = []
    for j, k, w in projections:
        call = _fresh(args, checked, arrays)
        with td.enable_grad():
            outs = _as_outputs(fn(*call))
            if len(outs) != len(base) or outs[j].shape != base[j].shape:
                raise ValueError(f"gradcheck: fn returned output {j} of shape {outs[j].shape} "
                                 f"with grad enabled but {base[j].shape} under no_grad")
            if outs[j].requires_grad:
                outs[j].backward(gradient=w)
        grads = {}
        for i in checked:
            g = call[i].grad
            want = arrays[i]
            if g is None:
                grads[i] = np.zeros(want.shape)
                continue
            where = f"output {j}" + ("" if k is None else f" (projection {k})")
            if g.shape != want.shape or g.dtype != want.dtype:
                return _fail(raise_exception,
                             f"Gradient of {where} with respect to input {i} has shape "
                             f"{g.shape} and dtype {g.dtype}; expected the input's shape "
                             f"{want.shape} and dtype {want.dtype}",
                             output_index=j, projection=k, input_index=i)
            grads[i] = _values(g)
        analytical.append(grads)

    # Numerical: central differences of every output, projected afterwards, so the same
    # 2 evaluations per input element serve every projection.
    numerical = [{i: np.zeros(arrays[i].shape) for i in checked} for _ in projections]
    with td.no_grad():
        for i in checked:
            a = arrays[i]
            for idx in np.ndindex(a.shape):  # () for a 0-d input: one element
                x0 = a[idx]  # a NumPy scalar: a copy
                h = eps * max(1.0, abs(float(x0)))
                a[idx] = x0 + h
                hi = float(a[idx])
                plus = _as_outputs(fn(*_fresh(args, checked, arrays)))
                a[idx] = x0 - h
                lo = float(a[idx])
                minus = _as_outputs(fn(*_fresh(args, checked, arrays)))
                a[idx] = x0
                step = hi - lo
                diffs = [(_values(p) - _values(m)) / step for p, m in zip(plus, minus)]
                for num, (j, _, w) in zip(numerical, projections):
                    num[i][idx] = np.sum(w * diffs[j])

    for (j, k, _), ana, num in zip(projections, analytical, numerical):
        for i in checked:
            ok = _compare(ana[i], num[i], atol, rtol)
            if ok is not None:
                return _fail(raise_exception, _mismatch(j, k, i, ana[i], num[i], atol, rtol, ok),
                             output_index=j, projection=k, input_index=i, element=ok,
                             analytical=float(ana[i][ok]), numerical=float(num[i][ok]))
    return True


def _compare(ana: np.ndarray, num: np.ndarray, atol: float, rtol: float) -> tuple | None:
    """The index of the worst element outside the tolerance, or None when all are inside."""
    err = np.abs(ana - num)
    tol = atol + rtol * np.abs(num)
    with np.errstate(all="ignore"):
        ratio = err / tol
    ratio = np.where(np.isnan(ratio), np.inf, ratio)  # NaN on either side never passes
    if ana.size == 0 or np.all(ratio <= 1.0):
        return None
    return tuple(int(t) for t in np.unravel_index(int(np.argmax(ratio)), ana.shape))


def _mismatch(j: int, k: int | None, i: int, ana: np.ndarray, num: np.ndarray, atol: float,
              rtol: float, idx: tuple) -> str:
    what = f"output {j}" if k is None else (
        f"output {j} (projection {k} of {_N_PROJECTIONS}: d sum(w * output) / d input for "
        f"fixed random weights w)")
    a, n = float(ana[idx]), float(num[idx])
    tol = atol + rtol * abs(n)
    err = abs(a - n)
    bad = int(np.sum(~(np.abs(ana - num) <= atol + rtol * np.abs(num))))
    return (f"Jacobian mismatch for {what} with respect to input {i},\n"
            f"worst at element {idx}: analytical {a!r}, numerical {n!r}, "
            f"|difference| {err:.6g} > atol + rtol * |numerical| = {tol:.6g} "
            f"(atol={atol:g}, rtol={rtol:g}); {bad} of {ana.size} elements differ\n"
            f"numerical:\n{_fmt(num)}\nanalytical:\n{_fmt(ana)}")


def gradgradcheck(fn: Callable[..., Any], inputs: Any, grad_outputs: Any = None, *,
                  eps: float | None = None, atol: float | None = None,
                  rtol: float | None = None, raise_exception: bool = True) -> bool:
    """Check the second derivatives tapediff computes for ``fn`` against central finite
    differences of its (first-order) gradient, in the spirit of
    ``torch.autograd.gradgradcheck``.

    ``fn`` returns one floating-point Tensor; ``inputs`` are as in ``gradcheck``.  The
    function checked is the vector-Jacobian product ``G(inputs, v) = v^T d fn / d inputs``
    (``td.vjp``) with ``v`` = ``grad_outputs`` (by default fixed random weights of the
    output's shape): ``gradcheck(G, (*inputs, v))`` compares the derivatives of ``G``, which
    tapediff computes by differentiating its recorded gradient (second derivatives, and the
    derivative with respect to ``v``), with central differences of ``G`` computed in
    first-order mode.  Tolerances and the error raised are ``gradcheck``'s.

    >>> import tapediff as td
    >>> from tapediff.testing import gradgradcheck
    >>> x = td.tensor([0.5, 1.0, 2.0], requires_grad=True)
    >>> gradgradcheck(lambda x: td.sin(x) * x, x)
    True
    """
    args, checked = _as_inputs(inputs)
    arrays = {i: np.array(args[i].numpy()) for i in checked}
    with td.no_grad():
        out = fn(*_fresh(args, checked, arrays))
    (out,) = _as_outputs(out)
    if grad_outputs is None:
        v = _weights(out.shape, 0, 0).astype(out.dtype)
    else:
        v = np.asarray(grad_outputs.numpy() if isinstance(grad_outputs, td.Tensor)
                       else grad_outputs, dtype=out.dtype)
        if v.shape != out.shape:
            raise ValueError(f"gradgradcheck: grad_outputs has shape {v.shape} but fn's output "
                             f"has shape {out.shape}")
    n = len(args)

    def first_order(*call: Any) -> tuple:
        full = list(call[:n])

        def f(*xs: Any) -> Any:
            inner = list(full)
            for i, x in zip(checked, xs):
                inner[i] = x
            return fn(*inner)
        _, pull = td.vjp(f, *[full[i] for i in checked])
        return pull(call[n])

    return gradcheck(first_order, (*args, td.tensor(v, requires_grad=True)), eps=eps,
                     atol=atol, rtol=rtol, raise_exception=raise_exception)
