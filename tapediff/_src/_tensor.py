"""Tensor: an array value, plus (when it requires grad) the tape slot that produced it.

The type and its methods; the operations they call live in the recording engine
(``_record``: arithmetic and the elementwise primitives), in ``_ops`` (everything else) and
in ``_guards`` (replay's guards), each imported at the end of this module: see the note
there.
"""
from __future__ import annotations

import dis
import sys
import threading
import warnings
from typing import Any, Iterator

import numpy as np

from . import _kernels as K
from . import _primitives as P
from ._format import format_tensor
from ._tape import compile_behind, thread_state

F64 = np.dtype(np.float64)
# Threads may backward into the same leaf at once (NumPy's in-place add releases the GIL);
# accumulation into .grad is serialised, as PyTorch's AccumulateGrad is.
_GRAD_LOCK = threading.Lock()


class BroadcastError(ValueError, RuntimeError):
    """Operand shapes that cannot be broadcast together (a ValueError for NumPy users, a
    RuntimeError for PyTorch users)."""


class _Size(int):
    """``t.size`` is the element count as in NumPy; calling it gives PyTorch's ``t.size()``."""

    _shape: tuple

    def __call__(self, dim: int | None = None):
        return self._shape if dim is None else self._shape[dim]


_ERR_FLOAT_ONLY = "Only Tensors of floating point and complex dtype can require gradients"


def tensor(data: Any, dtype: Any = None, requires_grad: bool = False) -> "Tensor":
    """A new leaf tensor holding a copy of ``data`` (scalar, nested list, ndarray or Tensor).

    Floats default to float64, ints to int64, bools to bool; ``dtype`` (a NumPy dtype or
    its name, e.g. ``td.float32``) overrides.

    >>> import tapediff as td
    >>> td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    tensor([0.1000, 0.2000, 0.3000], requires_grad=True)
    """
    if isinstance(data, Tensor):
        data = data._v
    a = np.array(data, dtype=dtype, copy=True, order="C")
    check_dtype(a.dtype)
    t = constant(a)
    if requires_grad:
        t.requires_grad = True
    return t


# ---------------------------------------------------------------------------------------------
# the Tensor class
# ---------------------------------------------------------------------------------------------
_ERR_RELEASED = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward.")
_ERR_NONLEAF_RG = (
    "you can only change requires_grad flags of leaf variables. If you want to use a computed "
    "variable in a subgraph that doesn't require differentiation use var_no_grad = "
    "var.detach().")
_ERR_LEAF_INPLACE = "a leaf Variable that requires grad is being used in an in-place operation."
_ERR_TO_NUMPY = (
    "a tensor that requires grad was converted to a NumPy array (np.asarray, np.array of a "
    "list of tensors, or a NumPy/SciPy function that converts its input), which would drop "
    "its gradient. Keep it a tensor: use tapediff or NumPy functions on the tensor itself, "
    "td.stack / td.concatenate for a list of tensors; or take its values without the "
    "gradient explicitly with .detach() or .numpy(), or under td.no_grad().")
_ERR_STORE = (
    "a tensor that requires grad was stored into a NumPy array (a[i] = t), which would drop its "
    "gradient. Build the result as a tensor instead: a tapediff buffer (b = td.zeros(n); "
    "b[i] = t), td.stack of the values, or take the value explicitly with t.item() / "
    "t.detach().")
_STORE_SUBSCR = dis.opmap["STORE_SUBSCR"]


def with_hint(exc: Exception, hint: str) -> Exception:
    """``exc`` (whose message is PyTorch's own, word for word) with ``hint``, the fix, added as
    a note: tracebacks show it, ``str(exc)`` stays PyTorch's."""
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(hint)
    return exc


HINT_FLOAT = ("hint: create the tensor with a float dtype, e.g. td.tensor([1.0, 2.0], "
              "requires_grad=True) or x.astype(np.float64).requires_grad_()")
HINT_SCALAR = ("hint: reduce the output to a scalar first (y.sum().backward()), or pass the "
               "weights of the outputs: y.backward(gradient=w) with w of y's shape")
HINT_LEAF_INPLACE = ("hint: update parameters under td.no_grad() (with td.no_grad(): w -= lr "
                     "* w.grad), or compute a new tensor out of place (y = w + v)")
_WARN_NONLEAF_GRAD = (
    "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. Its .grad "
    "attribute won't be populated during backward(): only leaves accumulate gradients. An "
    "update written w = w - lr * w.grad makes w a recorded (non-leaf) tensor; update the leaf "
    "in place instead: with td.no_grad(): w -= lr * w.grad.")
ERR_NESTED = (
    "this takes a gradient of the inputs of an enclosing td.grad / td.value_and_grad as "
    "numbers (backward() or Tape.gradient() without create_graph=True, or a function made "
    "with replay=True), which would be a constant to the enclosing differentiation and its "
    "gradient silently wrong. Record it instead: backward(create_graph=True), "
    "Tape.gradient(..., create_graph=True), or td.grad / td.value_and_grad without "
    "replay=True inside.")


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    Create tensors with ``td.tensor``; operate on them with arithmetic, methods and ``td.*``
    functions; call ``.backward()`` on a scalar result and read ``.grad`` on the leaves.

    >>> import tapediff as td
    >>> x = td.tensor(2.0, requires_grad=True)
    >>> z = x * td.tensor(5.0)
    >>> z.backward()
    >>> x.grad
    tensor(5.)
    """

    # A recorded tensor sets only _v, _tape, _slot and _rg (the hot path); _grad, _ver and
    # _leaf_record (a tape-less tensor's cached record, see _tape.LeafRecord) are set on
    # leaves and constants; _base ((root, NumPy view function)) on views and _views (weak
    # references to them) on their roots, for in-place updates (see _ops.update).
    __slots__ = ("_v", "_tape", "_slot", "_rg", "_grad", "_ver", "_leaf_record", "_base", "_views",
                 "__weakref__")
    __array_priority__ = 1000

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # NEP 13: np.exp(t), ndarray + t, ... record as tapediff operations
        return _numpy.array_ufunc(ufunc, method, *inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        # NEP 18: np.sum(t), np.concatenate([t, u]), ... record as tapediff operations
        return _numpy.array_function(func, types, args, kwargs)

    def __init__(self, data: Any, dtype: Any = None, requires_grad: bool = False) -> None:
        t = tensor(data, dtype=dtype, requires_grad=requires_grad)
        for name in ("_v", "_tape", "_slot", "_rg", "_grad", "_ver", "_leaf_record"):
            setattr(self, name, getattr(t, name))

    # -- autograd attributes -----------------------------------------------------------------
    @property
    def grad(self) -> "Tensor | None":
        """The accumulated gradient: None until a backward reaches this leaf, then a Tensor
        of the leaf's shape and dtype; ``backward`` adds to it.  Set it to None to reset."""
        try:
            g = self._grad
        except AttributeError:  # recorded tensors do not set it (see __slots__)
            g = None
        if g is None and self._tape is not None:  # as PyTorch: a non-leaf's is never filled
            warnings.warn(_WARN_NONLEAF_GRAD, UserWarning, stacklevel=2)
        return g

    @grad.setter
    def grad(self, g: "Tensor | None") -> None:
        if g is not None:
            if not isinstance(g, Tensor):
                raise TypeError(f"assigned grad expected to be a Tensor or None but got "
                                f"{type(g).__name__}")
            if g.shape != self.shape:
                raise RuntimeError(f"assigned grad has data of a different size: {g.shape} "
                                   f"vs the tensor's {self.shape}")
        self._grad = g

    @property
    def requires_grad(self) -> bool:
        """Whether operations on this tensor are recorded (settable on leaves)."""
        return self._rg

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        flag = bool(flag)
        if self._tape is not None:
            if not flag:
                raise RuntimeError(_ERR_NONLEAF_RG)
            return
        if flag and dtype_of(self._v).kind != "f":
            raise with_hint(RuntimeError(_ERR_FLOAT_ONLY), HINT_FLOAT)
        self._rg = flag
        self._leaf_record = None

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Set ``requires_grad`` in place and return ``self``."""
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        """True unless this tensor was produced by a recorded operation."""
        return self._tape is None

    @property
    def grad_fn(self) -> str | None:
        """Name of the recorded operation that produced this tensor (None for leaves)."""
        tp = self._tape
        if tp is None:
            return None
        op = int(tp.op[self._slot])
        name = P.GRAD_FN[op]
        if op == K.OP_RESTRIDE:
            m = int(tp.meta_at[self._slot])
            name = "Sum" if tp.meta[m + 3] > 1 else "View"
        return f"<{name}Backward0>"

    def detach(self) -> "Tensor":
        """A new leaf with a copy of this tensor's value, outside any graph.

        Unlike PyTorch, the copy shares no storage: an in-place update of either tensor
        never changes the other (nor a value recorded on a tape).  Inside a function
        recorded for replay, the value is guarded (a replay cannot follow it)."""
        observe(self, "detach()")
        v = self._v
        return wrap(v if type(v) is float else v.copy())

    def _gradient_on(self, tape: Any, xs: Any, gradient: Any, retain_graph: Any,
                     create_graph: bool) -> Any:
        """``tape.gradient(self, xs, ...)`` (the storage layer calls back here)."""
        return tape_gradient(tape, self, xs, gradient, retain_graph, create_graph)

    def backward(self, gradient: Any = None, retain_graph: bool | None = None,
                 create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf this tensor depends on.

        ``gradient`` is required when ``self`` has more than one element (it weights the
        outputs, as a vector-Jacobian product).  The records swept are released unless
        ``retain_graph=True`` (by default ``create_graph``); leaves are never released.

        With ``create_graph=True`` the gradient is computed with recorded operations, so
        ``.grad`` is itself a recorded tensor that can be differentiated again (gradient
        penalties, second derivatives):

        >>> import tapediff as td
        >>> x = td.tensor(3.0, requires_grad=True)
        >>> (x ** 3).backward(create_graph=True)
        >>> g = x.grad  # 3 x^2
        >>> x.grad = None
        >>> g.backward(); x.grad  # 6 x
        tensor(18.)
        """
        if retain_graph is None:
            retain_graph = create_graph
        if create_graph and self._tape is not None:
            if not self._rg:
                raise RuntimeError(
                    "element 0 of tensors does not require grad and does not have a grad_fn")
            _graph_backward(self, gradient, retain_graph)
            return
        if not self._rg:
            raise RuntimeError(
                "element 0 of tensors does not require grad and does not have a grad_fn")
        shape = self.shape
        if gradient is None:
            if size_of(self._v) != 1:
                raise with_hint(RuntimeError(
                    "grad can be implicitly created only for scalar outputs"), HINT_SCALAR)
            seed = np.ones(1)
        else:
            g = gradient._v if isinstance(gradient, Tensor) else gradient
            seed = np.asarray(g, dtype=F64)
            if seed.shape != shape:
                raise RuntimeError(f"Mismatch in shape: gradient has a shape of {seed.shape} "
                                   f"and output has a shape of {shape}.")
        tape = self._tape
        if tape is not None and (tape.records_for_replay or thread_state.differentiating):
            _check_differentiable_here(tape)
        if tape is None:  # a leaf differentiated with respect to itself
            with _GRAD_LOCK:
                _accumulate_grad(self, seed.ravel())
            return
        slots = tape.sweep(self._slot, seed, retain_graph, plan=True)
        if slots is None:
            raise RuntimeError(_ERR_RELEASED)
        cached = tape._cached
        # Scalar float64 leaves (one per coefficient in scalar code) read their adjoints in
        # one gather and accumulate as Python floats; the others go through NumPy.
        scalar = (tape.n[slots] == 1) & (tape.arena_of[slots] == K.KIND_F64)
        with _GRAD_LOCK:
            for s, g in zip(slots[scalar].tolist(), tape.scalar_adjoints(slots[scalar])):
                r = cached.get(s)
                leaf = r() if r is not None else None
                if leaf is None:
                    continue
                old = leaf.grad
                if (type(leaf._v) is float and old is not None and type(old._v) is float
                        and old._tape is None):
                    old._v += g
                    old._ver += 1  # a tape holding the old .grad value records it again
                elif type(leaf._v) is float and old is None:
                    leaf._grad = wrap(g)
                else:
                    _accumulate_grad(leaf, np.array([g]))
            handed = tape._handed
            for s in slots[~scalar].tolist():
                r = cached.get(s)
                leaf = r() if r is not None else None
                if leaf is not None:
                    _accumulate_grad(leaf, tape.adjoint_view(s), s in handed)
            tape._handed = {}  # (a .grad set to None later frees its array)
        tape.settle()  # a large tape: the next step records into the same warm arena
        compile_behind()  # (kernels this backward found missing, in the background)

    # -- array attributes --------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """The tensor's shape, a tuple of ints."""
        v = self._v
        return () if type(v) is float else v.shape

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        v = self._v
        return 0 if type(v) is float else v.ndim

    @property
    def dtype(self) -> np.dtype:
        """The NumPy dtype of the values."""
        return dtype_of(self._v)

    @property
    def size(self) -> int:
        """Number of elements (NumPy); ``t.size()`` / ``t.size(dim)`` give PyTorch's shape."""
        s = _Size(size_of(self._v))
        s._shape = self.shape
        return s

    def numel(self) -> int:
        """Number of elements."""
        return size_of(self._v)

    def dim(self) -> int:
        """Number of dimensions (PyTorch's spelling of ``ndim``)."""
        return self.ndim

    def numpy(self) -> np.ndarray:
        """A copy of the values as an ndarray (never shared with the tensor or its tape)."""
        observe(self, ".numpy()")
        return np.array(self._v)

    def tolist(self) -> Any:
        """The values as (nested lists of) Python numbers."""
        observe(self, ".tolist()")
        return np.asarray(self._v).tolist()

    def item(self) -> Any:
        """The single value of a one-element tensor, as a Python number."""
        observe(self, ".item()")
        v = self._v
        if type(v) is float:
            return v
        if v.size != 1:
            raise RuntimeError(f"a Tensor with {v.size} elements cannot be converted to Scalar")
        return v.item()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # NumPy converts silently (np.asarray, np.array([t, u]), SciPy's np.asarray(x)): a
        # tensor that requires grad refuses rather than drop its gradient, as PyTorch's does
        if carries_gradient(self):
            raise RuntimeError(_ERR_TO_NUMPY)
        observe(self, "np.asarray()")
        # np.asarray(t) gives the values: a copy for recorded tensors (the arena is reused),
        # a read-only view of a leaf's own storage otherwise.
        v = self._v
        if copy or (type(v) is np.ndarray and self._tape is not None):
            return np.array(v, dtype=dtype)
        a = np.asarray(v, dtype=dtype)
        if a is v:
            a = a.view()
            a.flags.writeable = False
        return a

    def __float__(self) -> float:
        observe(self, "float()")
        if size_of(self._v) != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        # NumPy converts a one-element tensor stored into an ndarray (a[i] = t) with float():
        # that store drops the gradient, so it refuses as np.asarray(t) does.  The caller's
        # frame tells the store apart from an explicit float(t).
        if self._rg:  # (the frame is read only for a tensor that requires grad)
            caller = sys._getframe(1)
            if caller.f_code.co_code[caller.f_lasti] == _STORE_SUBSCR and carries_gradient(self):
                raise RuntimeError(_ERR_STORE)
        return float(self.item())

    def __int__(self) -> int:
        observe(self, "int()")
        if size_of(self._v) != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return int(self.item())

    def __index__(self) -> int:
        observe(self, "an index")
        if self.dtype.kind not in "iub" or size_of(self._v) != 1:
            raise TypeError("only integer tensors of a single element can be converted to an "
                            "index")
        return int(self.item())

    def __bool__(self) -> bool:
        observe(self, "bool()")
        if size_of(self._v) != 1:
            raise RuntimeError("Boolean value of Tensor with more than one value is ambiguous")
        return bool(self.item())

    def __len__(self) -> int:
        v = self._v
        if type(v) is float or v.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return v.shape[0]

    def __iter__(self) -> Iterator["Tensor"]:
        for i in range(len(self)):
            yield self[i]

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        v = RAW_VALUE.__get__(self)  # display only: no replay guard
        suffix = []
        if self._tape is not None:
            suffix.append(f"grad_fn={self.grad_fn}")
        elif self._rg:
            suffix.append("requires_grad=True")
        return format_tensor(np.asarray(v), suffix)

    def __format__(self, spec: str) -> str:
        # display only: no replay guard (the computation does not depend on it)
        v = RAW_VALUE.__get__(self)
        if spec and size_of(v) == 1:
            return format(np.asarray(v).item(), spec)
        return repr(self) if not spec else format(repr(self), spec)

    # -- arithmetic --------------------------------------------------------------------------
    # (+, -, *, / and ** and their reflections are made by ``_record.binary_method``, below)
    def __mod__(self, other: Any) -> "Tensor":
        return _ops.remainder(self, other)

    def __rmod__(self, other: Any) -> "Tensor":
        return _ops.remainder(other, self)

    def __neg__(self) -> "Tensor":
        if dtype_of(self._v).kind != "f":  # ints stay ints (never recorded)
            return constant(np.negative(self._v))
        return self * -1

    def __pos__(self) -> "Tensor":
        return self

    def __abs__(self) -> "Tensor":
        return unary(P.UNARY["abs"], self)

    # -- comparisons: bool tensors, never recorded --------------------------------------------
    def _compare(self, other: Any, uf: np.ufunc) -> "Tensor":
        ov = other._v if isinstance(other, Tensor) else other
        r = np.asarray(uf(self._v, ov))
        tape = thread_state.rec
        if tape is not None and tape.records_for_replay:
            return compare_for_replay(self, other, uf, r)
        return wrap(r)

    def __lt__(self, other: Any) -> "Tensor":
        return self._compare(other, np.less)

    def __le__(self, other: Any) -> "Tensor":
        return self._compare(other, np.less_equal)

    def __gt__(self, other: Any) -> "Tensor":
        return self._compare(other, np.greater)

    def __ge__(self, other: Any) -> "Tensor":
        return self._compare(other, np.greater_equal)

    def __eq__(self, other: Any) -> "Tensor":  # type: ignore[override]
        return self._compare(other, np.equal)

    def __ne__(self, other: Any) -> "Tensor":  # type: ignore[override]
        return self._compare(other, np.not_equal)

    # -- in-place updates ----------------------------------------------------------------
    # On a tensor outside the graph (a constant, or a leaf under no_grad) the value changes
    # in place.  Anything involving the graph is recorded functionally and the tensor is
    # re-pointed at the result (_ops.update), so NumPy-style `y += v` and `y[i] = v` code
    # differentiates unchanged; views follow as in NumPy.
    def _inplace(self, other: Any, uf: Any) -> "Tensor":
        if (self._tape is not None or hasattr(self, "_base") or thread_state.grad_enabled and (
                self._rg or isinstance(other, Tensor) and other._rg)):
            return _ops.update(self, lambda: uf(self, other), uf.__name__)
        ov = other._v if isinstance(other, Tensor) else other
        v = self._v
        if type(v) is float:
            r = numpy_call(uf, v, ov)
            if np.shape(r) != ():
                raise ValueError(f"non-broadcastable output operand with shape () doesn't "
                                 f"match the broadcast shape {np.shape(r)}")
            self._v = float(r)
        else:
            if not v.flags.writeable:  # a value shared with a tape or another tensor
                v = v.copy()
            numpy_call(uf, v, ov, out=v, casting="same_kind")
            self._v = v
        self._ver += 1
        _ops.mutated(self)
        return self

    def __iadd__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.add)

    def __isub__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.subtract)

    def __imul__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.multiply)

    def __itruediv__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.true_divide)

    def __ipow__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.power)

    def __imod__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.remainder)

    def __imatmul__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.matmul)

    def zero_(self) -> "Tensor":
        """Fill with zeros in place (for ``.grad`` tensors and constants) and return self."""
        return self._inplace(0, np.multiply)

    def __getitem__(self, key: Any) -> "Tensor":
        return _ops.getitem(self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        if (self._tape is not None or hasattr(self, "_base") or thread_state.grad_enabled and (
                self._rg or isinstance(value, Tensor) and value._rg)):
            _ops.update(self, lambda: _ops.AtIndexer(self)[key].set(value), None)
            return
        v = self._v
        if type(v) is float or not v.flags.writeable:
            v = np.array(v)
        v[key] = value._v if isinstance(value, Tensor) else value
        self._v = tensor_value(v)
        self._ver += 1
        _ops.mutated(self)

    # -- math methods (the elementwise primitives' are added by tapediff._src._functions) ---------
    def square(self) -> "Tensor":
        """Elementwise x * x."""
        return self * self

    def reciprocal(self) -> "Tensor":
        """Elementwise 1 / x."""
        return _ops.reciprocal(self)

    def sign(self) -> "Tensor":
        """Elementwise sign (never differentiated)."""
        return _ops.sign(self)

    # -- reductions --------------------------------------------------------------------------
    def sum(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Sum over ``axis`` (None: all; int or tuple).  ``dim``/``keepdim`` are aliases."""
        return _ops.sum_(self, axis, keepdims, **aliases)

    def mean(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Mean over ``axis`` (None: all; int or tuple).  ``dim``/``keepdim`` are aliases."""
        return _ops.mean(self, axis, keepdims, **aliases)

    def var(self, axis: Any = None, ddof: int = 0, keepdims: bool = False,
            **aliases: Any) -> "Tensor":
        """Variance over ``axis`` with ``ddof`` delta degrees of freedom."""
        return _ops.var(self, axis, ddof, keepdims, **aliases)

    def std(self, axis: Any = None, ddof: int = 0, keepdims: bool = False,
            **aliases: Any) -> "Tensor":
        """Standard deviation over ``axis``."""
        return _ops.std(self, axis, ddof, keepdims, **aliases)

    def max(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Maximum over ``axis``; tied maxima share the gradient."""
        return _ops.max_(self, axis, keepdims, **aliases)

    def min(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Minimum over ``axis``; tied minima share the gradient."""
        return _ops.min_(self, axis, keepdims, **aliases)

    def argmax(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Indices of the maxima (not differentiable)."""
        return _ops.argmax(self, axis, keepdims, **aliases)

    def argmin(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Indices of the minima (not differentiable)."""
        return _ops.argmin(self, axis, keepdims, **aliases)

    def prod(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Product over ``axis``; exact gradients with zeros."""
        return _ops.prod(self, axis, keepdims, **aliases)

    def cumsum(self, axis: Any = None, **aliases: Any) -> "Tensor":
        """Running sum along ``axis``."""
        return _ops.cumsum(self, axis, **aliases)

    def cumprod(self, axis: Any = None, **aliases: Any) -> "Tensor":
        """Running product along ``axis``."""
        return _ops.cumprod(self, axis, **aliases)

    def clip(self, a_min: Any = None, a_max: Any = None) -> "Tensor":
        """Values limited to [a_min, a_max] (gradient 0 where a bound is active)."""
        return _ops.clip(self, a_min, a_max)

    # -- shape -------------------------------------------------------------------------------
    def reshape(self, *shape: Any) -> "Tensor":
        """A tensor of the same values with a new shape (-1 infers one dimension)."""
        return _ops.reshape(self, *shape)

    def view(self, *shape: Any) -> "Tensor":
        """PyTorch's name for ``reshape``."""
        return _ops.reshape(self, *shape)

    def ravel(self) -> "Tensor":
        """The values as a 1-d tensor."""
        return _ops.ravel(self)

    def flatten(self) -> "Tensor":
        """The values as a 1-d tensor."""
        return _ops.ravel(self)

    def squeeze(self, axis: Any = None, **aliases: Any) -> "Tensor":
        """Without size-1 dimensions (or only ``axis``)."""
        return _ops.squeeze(self, axis, **aliases)

    def transpose(self, *axes: Any) -> "Tensor":
        """Axes permuted (reversed by default), as ``ndarray.transpose``."""
        if len(axes) == 1 and (axes[0] is None or not isinstance(axes[0], (int, np.integer))):
            axes = axes[0]
        return _ops.transpose(self, axes or None)

    def flip(self, axis: Any = None, **aliases: Any) -> "Tensor":
        """Elements reversed along ``axis`` (PyTorch: ``dims=``)."""
        return _ops.flip(self, axis, **aliases)

    def unsqueeze(self, dim: int) -> "Tensor":
        """A new size-1 dimension at ``dim`` (PyTorch's name for ``expand_dims``)."""
        return _ops.expand_dims(self, dim)

    def roll(self, shift: Any, axis: Any = None, **aliases: Any) -> "Tensor":
        """Elements rolled along ``axis`` (PyTorch: ``dims=``)."""
        return _ops.roll(self, shift, axis, **aliases)

    def softmax(self, axis: Any = -1, **aliases: Any) -> "Tensor":
        """Softmax along ``axis`` (default last; PyTorch: ``dim=``)."""
        return _ops.softmax(self, axis, **aliases)

    def log_softmax(self, axis: Any = -1, **aliases: Any) -> "Tensor":
        """Log-softmax along ``axis`` (default last; PyTorch: ``dim=``)."""
        return _ops.log_softmax(self, axis, **aliases)

    def logsumexp(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """log(sum(exp(x))) along ``axis``, without overflow."""
        return _ops.logsumexp(self, axis, keepdims, **aliases)

    def swapaxes(self, axis1: int, axis2: int) -> "Tensor":
        """Two axes interchanged."""
        return _ops.swapaxes(self, axis1, axis2)

    @property
    def T(self) -> "Tensor":
        """All axes reversed."""
        return _ops.transpose(self)

    @property
    def mT(self) -> "Tensor":
        """The last two axes swapped (a batch of matrices transposed)."""
        return _ops.swapaxes(self, -1, -2)

    def diagonal(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> "Tensor":
        """The diagonal over ``axis1`` and ``axis2``."""
        return _ops.diagonal(self, offset, axis1, axis2)

    def trace(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> "Tensor":
        """Sum along a diagonal."""
        return _ops.trace(self, offset, axis1, axis2)

    def repeat(self, repeats: Any, axis: Any = None, **aliases: Any) -> "Tensor":
        """Elements repeated, as ``ndarray.repeat``."""
        return _ops.repeat(self, repeats, axis, **aliases)

    def dot(self, other: Any) -> "Tensor":
        """``np.dot(self, other)``."""
        return _ops.dot(self, other)

    def __matmul__(self, other: Any) -> "Tensor":
        return _ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> "Tensor":
        return _ops.matmul(other, self)

    def astype(self, dtype: Any) -> "Tensor":
        """The values converted to ``dtype``; between float32 and float64 the gradient flows
        (converted back)."""
        return _ops.astype(self, dtype)

    def float(self) -> "Tensor":
        """PyTorch's ``.float()``: as float32."""
        return _ops.astype(self, np.float32)

    def double(self) -> "Tensor":
        """PyTorch's ``.double()``: as float64."""
        return _ops.astype(self, np.float64)

    @property
    def at(self) -> "Any":
        """Functional index updates: ``x.at[i].set(v)``, ``x.at[i].add(v)`` return new tensors
        and record correctly (use them where ``x[i] = v`` would modify a recorded tensor)."""
        return _ops.AtIndexer(self)



def _seed_of(y: Tensor, gradient: Any) -> Any:
    """backward's ``gradient`` argument checked against ``y``: None for a scalar ``y``, else
    a tensor of ``y``'s shape (kept as given when it is a tensor: it may require grad)."""
    if gradient is None:
        if size_of(y._v) != 1:
            raise with_hint(RuntimeError(
                "grad can be implicitly created only for scalar outputs"), HINT_SCALAR)
        return None
    g = gradient if isinstance(gradient, Tensor) else constant(np.asarray(gradient, y.dtype))
    if g.shape != y.shape:
        raise RuntimeError(f"Mismatch in shape: gradient has a shape of {g.shape} "
                           f"and output has a shape of {y.shape}.")
    return g


def _graph_backward(y: Tensor, gradient: Any, retain_graph: bool) -> None:
    """``y.backward(create_graph=True)``: each leaf's ``.grad`` gets (or has added) a
    recorded tensor, the gradient as a function of the leaves (see ``_graph``)."""
    from ._graph import graph_gradients
    seed = _seed_of(y, gradient)
    tape = y._tape
    leaves = {}
    for s, r in tape._cached.items():
        t = r()
        if t is not None and t._rg and t._leaf_record is not None and t._leaf_record.slot == s:
            leaves[s] = t
    adjoints = graph_gradients(y, seed, None, retain_graph)
    from ._grad_mode import enable_grad
    with _GRAD_LOCK, enable_grad(), tape:
        for s, g in adjoints.items():
            leaf = leaves.get(s)
            if leaf is None:
                continue
            g = g.reshape(leaf.shape)
            old = leaf._grad
            leaf._grad = g if old is None else old + g


def _accumulate_grad(leaf: Tensor, g: np.ndarray, own: bool = False) -> None:
    """Add the flat adjoint ``g`` into ``leaf.grad`` (created on first use; from ``g`` itself
    when ``own``: an array nothing else holds).

    An existing ``.grad`` outside any graph is updated in place, its version bumped so that a
    tape holding its old value records it again; any other is replaced."""
    old = leaf.grad
    if type(leaf._v) is float:  # a 0-d float64 leaf: its grad is a Python float too
        if old is None:
            leaf._grad = wrap(float(g[0]))
        elif type(old._v) is float and old._tape is None:
            old._v += float(g[0])
            old._ver += 1
        else:
            leaf._grad = constant(old._v + g[0])
        return
    dt = leaf.dtype
    shape = leaf.shape
    if old is None:
        leaf._grad = constant(g.reshape(shape).astype(dt, copy=not own))
        return
    ov = old._v
    if (old._tape is None and type(ov) is np.ndarray and ov.flags.writeable
            and ov.shape == shape):
        ov += g.reshape(shape).astype(ov.dtype, copy=False)
        old._ver += 1
    else:
        leaf._grad = constant(np.asarray(ov) + g.reshape(shape).astype(dt, copy=False))


# The one intended late import: Tensor's methods call the operations in _ops, which build on
# this module; the elementwise primitives' methods (x.exp() ...) come from their table rows.


def tape_gradient(tape: Any, y: Tensor, xs: Any, gradient: Any = None,
                  retain_graph: bool | None = None, create_graph: bool = False) -> Any:
    """See ``Tape.gradient``."""
    if not isinstance(y, Tensor):
        raise TypeError(f"gradient() needs a Tensor output, got {type(y).__name__}")
    single = isinstance(xs, Tensor)
    xs = [xs] if single else list(xs)
    for x in xs:
        if not isinstance(x, Tensor):
            raise TypeError(f"gradient() differentiates with respect to Tensors, got "
                            f"{type(x).__name__}")
        if not x._rg:
            raise RuntimeError("One of the differentiated Tensors does not require grad")
    if not y._rg:
        raise RuntimeError("element 0 of tensors does not require grad and does not have a "
                           "grad_fn")
    if y._tape is not None and y._tape is not tape:
        raise RuntimeError("the output was recorded on another tape; call gradient() on the "
                           "tape that recorded it")
    if retain_graph is None:
        retain_graph = create_graph
    if create_graph and y._tape is not None:
        return _pack(_graph_gradient(tape, y, xs, _seed_of(y, gradient), retain_graph), single)
    _check_differentiable_here(tape)
    if gradient is None:
        if size_of(y._v) != 1:
            raise with_hint(RuntimeError(
                "grad can be implicitly created only for scalar outputs"), HINT_SCALAR)
        seed = np.ones(1)
    else:
        seed = np.asarray(gradient._v if isinstance(gradient, Tensor) else gradient, F64)
        if seed.shape != y.shape:
            raise RuntimeError(f"Mismatch in shape: gradient has a shape of {seed.shape} "
                               f"and output has a shape of {y.shape}.")
    if y._tape is None:  # y is a leaf: d y / d y is the seed
        return _pack([constant(seed.astype(x.dtype).reshape(x.shape)) if x is y else
                      constant(np.zeros(x.shape, x.dtype)) for x in xs], single)
    root = y._slot
    touched = np.zeros(root + 1, np.uint8)
    if tape.sweep(root, seed, retain_graph, touched) is None:
        raise RuntimeError(_ERR_RELEASED)
    records: dict = {}  # id of a tape-less tensor -> its (leaf) records on this tape
    for s, r in tape._cached.items():
        records.setdefault(id(r()), []).append(s)
    out = []
    for x in xs:
        slots = [x._slot] if x._tape is tape else records.get(id(x), [])
        g = np.zeros(x.shape, x.dtype)
        for s in slots:  # a leaf recorded more than once gets the sum
            if s <= root and touched[s]:
                g += tape.adjoint_view(s).reshape(x.shape)
        out.append(constant(g))
    return _pack(out, single)


def _graph_gradient(tape: Any, y: Tensor, xs: list, seed: Any, retain_graph: bool) -> list:
    """The gradients of ``y`` with respect to each of ``xs`` as recorded tensors (zeros for
    an ``x`` that ``y`` does not depend on), computed by ``_graph.graph_gradients``."""
    from ._graph import graph_gradients
    records: dict = {}  # id of a tape-less tensor -> its (leaf) records on this tape
    for s, r in tape._cached.items():
        records.setdefault(id(r()), []).append(s)
    wanted = [[x._slot] if x._tape is tape else records.get(id(x), []) for x in xs]
    adjoints = graph_gradients(y, seed, sorted({s for ss in wanted for s in ss}), retain_graph)
    from ._grad_mode import enable_grad
    out = []
    with enable_grad(), tape:
        for x, ss in zip(xs, wanted):
            parts = [adjoints[s] for s in ss if s in adjoints]
            if not parts:
                out.append(constant(np.zeros(x.shape, x.dtype)))
                continue
            g = parts[0]
            for p in parts[1:]:
                g = g + p
            out.append(g.reshape(x.shape))
    return out


def carries_gradient(t: Tensor) -> bool:
    """Whether converting ``t`` to values would drop a gradient: ``t`` requires grad, grad
    mode is on, and (inside td.grad & co.) ``t`` depends on the inputs being differentiated
    (not on data inputs or tensors closed over, which are constants there)."""
    if not (t._rg and thread_state.grad_enabled):
        return False
    active = thread_state.differentiating
    if not active:
        return True
    if t._tape is None:
        return any(id(t) in ids for _, ids, _ in active)
    levels = [(ids, recorded) for tape, ids, recorded in active if tape is t._tape]
    if not levels:
        return True  # recorded outside every differentiation running now
    tape = t._tape
    slots = [x._slot for _, recorded in levels for x in recorded if x._tape is tape]
    ids = set().union(*(ids for ids, _ in levels))
    slots += [s for s, r in tape._cached.items() if id(r()) in ids]
    if not slots:
        return False
    mark = np.zeros(t._slot + 1, np.uint8)
    K.mark_inputs(t._slot, tape.op, tape.in_a, tape.in_b, tape.meta_at, tape.meta, mark)
    return any(s <= t._slot and mark[s] for s in slots)


def _check_differentiable_here(tape: Any) -> None:
    """A gradient inside a function being recorded for replay would be a constant of the
    recording (replay has no derivative of a reverse sweep), and one that reaches the inputs
    of an enclosing td.grad would be a constant of that differentiation: refuse both."""
    if tape.records_for_replay:
        raise RuntimeError(
            "a function recorded for replay differentiates its own tape; its gradient would be "
            "a constant of the recording.  Differentiate outside the function, or call it "
            "without replay=True")
    if holds_enclosing_inputs(tape) or any(outer is tape
                                           for outer, *_ in thread_state.differentiating):
        raise RuntimeError(ERR_NESTED)


def holds_enclosing_inputs(tape: Any) -> bool:
    """Whether ``tape`` records an input of a td.grad & co. running now: differentiating it,
    or returning its values, would hide that dependence from the enclosing call."""
    return any(id(r()) in leaves for _, leaves, _ in thread_state.differentiating
               for r in tape._cached.values())


def _pack(out: list, single: bool) -> Any:
    return out[0] if single else tuple(out)


# The one intended late import.  Tensor's methods call the recording engine, the operations
# and the guards, which all build on the Tensor type: they are imported here, once the type
# exists (``tapediff/__init__`` imports this module first).  The elementwise primitives'
# methods (x.exp() ...) come from their rows of the primitive table, through _ops.
from ._record import (  # noqa: E402
    ADD, DIV, MUL, POW, SUB, binary_method, check_dtype, constant, dtype_of, numpy_call,
    size_of, tensor_value, unary, wrap,
)
from . import _ops  # noqa: E402  (before _guards, which reads _ops at call time)
from ._guards import RAW_VALUE, compare_for_replay, observe  # noqa: E402
from . import _numpy  # noqa: E402

for _name, _fn in _ops.ELEMENTWISE.items():
    setattr(Tensor, _name, _fn)
for _name, _spec in (("add", ADD), ("sub", SUB), ("mul", MUL), ("truediv", DIV), ("pow", POW)):
    for _reflected in (False, True):
        _method = binary_method(_spec, _reflected)
        _method.__name__ = f"__{'r' * _reflected}{_name}__"
        _method.__qualname__ = f"Tensor.{_method.__name__}"
        setattr(Tensor, _method.__name__, _method)
