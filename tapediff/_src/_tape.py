"""The flat Wengert tape: record arrays, value arenas, sweeps, reclamation, per-thread state.

A tape is a struct of arrays: record ``i`` (opcode, input slots, arena offset, size, scalar
parameter, side-table offset, flags, arena kind) produces slot ``i``.  Values live in two
flat arenas, one per floating dtype (float64 and float32, so float32 code stays float32 end
to end), adjoints in two more of the same sizes.  Nothing on the tape is a Python object,
so the jitted kernels in ``_kernels`` can reverse or re-run (replay) any record from the
arrays.

Python-side bookkeeping is limited to weak references: to the tensors recorded here
(the roots of liveness) and to the tape-less tensors (leaves, constants) that have a record
here (to receive ``.grad`` and to keep their cached slot valid).  Tensors hold their tape
strongly, the tape holds nothing strongly, so a tape dies with the last tensor that uses it.

Memory: every operation first reserves room for all the records and values it will append
(``reserve``).  When room runs out the tape reclaims: it marks what live tensors can still
reach (a jitted pass).  If most of the tape is live (a graph being built), it grows by
doubling where it lies: arenas of 8 MB and more sit in a region of reserved address space
and grow within it, so no value moves and no fresh page is written for a copy.  Otherwise it
compacts records in place and values into a fresh (or the spare) arena, growing it if what
is live fills more than half of it.  Dead records that sit below live ones (the previous
step's ``loss`` of a script-level loop) are reclaimed too.

Adjoints: an unplanned sweep gives every record the adjoint range at its value's offset in an
adjoint arena the size of the values.  ``Tensor.backward`` on a large tape of array records
plans instead (``_kernels.plan_adjoints``): a record's adjoint range exists from its first
touch until the record has been swept, so the adjoint arenas hold the largest set of
adjoints live at one time, reused in place (``sweep``).

Layering: this is the storage layer; it imports only the kernels, the table of primitives and
the planner of fused groups (``_fusion``, for ``Tensor.backward``), and knows nothing of
tensors (``Tape.gradient`` hands its work to the tensor it is given).  The per-thread state
lives here too, in one place (``_State``: grad mode, the stack of open tapes, and the tape
recording now, which the hot path reads in one thread-local lookup);
``tapediff._src._grad_mode`` is the public API over it.
"""
from __future__ import annotations

import atexit
import mmap
import sys
import threading
from typing import Any, NamedTuple

import numpy as np

from . import _fusion
from . import _kernels as K
from . import _primitives as P

_MIN_RECORDS = 4096
_MIN_VALUES = 65536  # a minimum arena is 512 KB of float64 (virtual until written)
_MIN_META = 1024
# ``Tape.settle`` compacts a tape in place after a backward once it holds this many values
# (8 MB of float64): below that a tape is cheap to keep as it is, and scalar code, whose
# tapes are small and whose backward calls are many, never pays for a compaction there.
SETTLE_AT = 1 << 20
# ... and so does a tape of at most ``PLAN_MAX`` records (array code) once it holds
# ``SETTLE_ARRAYS_AT`` values (512 KB): a training step of a few large records otherwise
# records each step at a fresh offset of its arena, out of cache (MLP 784-256-256-10 batch 64,
# about 130,000 values a step: 3 % faster settled).
SETTLE_ARRAYS_AT = 1 << 16
# A backward plans its adjoint storage by liveness (``plan_adjoints``) on tapes of at least
# ``PLAN_AT`` values and at most ``PLAN_MAX`` records (array code: a few large records, where
# each adjoint range freed is megabytes; the plan costs O(records x live ranges)).
PLAN_AT = 1 << 20
PLAN_MAX = 1 << 13
# ... and fuses the elementwise chains of a tape of at most ``FUSE_RECORDS`` records holding at
# least ``FUSE_VALUES`` values (``_plan``), when the adjoint ranges the groups keep at the
# values' offsets are at most ``FUSE_ROOM`` times the planned ones: grouping costs ~10 us of
# Python a record, and a group saves a pass over memory per member.
FUSE_RECORDS = 256
FUSE_VALUES = 1 << 18
FUSE_ROOM = 1.25
# Replay hands the forward rule of a ``replay_numpy`` primitive back to NumPy on records of at
# least ``BIG`` elements: NumPy's SIMD loops beat a scalar libm call per element by more than
# a hand-back costs (e.g. tanh: ~0.8 ns/element against ~9), and give NumPy's values exactly.
BIG = 2048
# A backward hands the adjoint of a leaf that one matrix product alone reads over as its
# ``.grad`` (no copy out of the arena) from this many elements (512 KB of float64): below
# that, the copy (~0.3 ns an element) costs less than counting the leaf's readers on the tape.
HANDOVER_AT = 1 << 16

# Arenas of at least ``REGION_AT`` bytes live in a reserved region of virtual memory (``_region``)
# that they grow into without moving: a growing tape neither copies its values nor touches
# fresh pages for the copy (a first touch of a page is the main cost of memory here).
REGION_AT = 8 << 20
_RESERVE = 16 << 30  # bytes of address space a region reserves (at least; none is committed)
_MAP_NORESERVE = 0x4000  # Linux's value (absent from the mmap module)
_STAGGER = 2112  # bytes (33 cache lines): see _arena
_regions = 0  # regions made so far

_NOTICED: set = set()  # jitted kernels checked for a compile this process

# Regions of tapes that died (the private tapes of value_and_grad, grad, jacrev...), kept for
# the next tape: a loop of such calls writes into the same, already faulted-in pages each
# call instead of mapping fresh ones (measured, GMM d=64 K=25 n=10k with the default
# allocator: ~430 huge-page faults and ~0.1 s of system time per call).  A region is reused
# only when nothing else refers to it (no array a caller kept is a view of it).
_POOL: list = []
_POOL_MAX = 8
_POOL_LOCK = threading.Lock()

# (the message Tensor.backward gives, for the sweeps of Jacobians)
_ERR_RELEASED = ("Trying to backward through the graph a second time: a backward without "
                 "retain_graph=True released the records a Jacobian needs.  Compute the "
                 "Jacobian first, or pass retain_graph=True to that backward.")


def _cache_index(kernel: Any) -> dict | None:
    """The entries of ``kernel`` in Numba's on-disk cache, keyed by (signature, ...); None
    when they cannot be read (a private API: any surprise there reads as unknown)."""
    try:
        return kernel._cache._cache_file._load_index()
    except Exception:
        return None


def notice_compile(kernel: Any, what: str, seconds: int) -> None:
    """Say on stderr, before the first call of ``kernel`` in this process, that Numba is about
    to compile it (no valid entry in its on-disk cache): a one-time wait of seconds that
    would otherwise look like a hang.  An unreadable cache index skips the notice."""
    if kernel in _NOTICED:
        return
    _NOTICED.add(kernel)
    index = _cache_index(kernel)
    if index is not None and not index:
        print(f"tapediff: compiling {what} for this machine, once (about {seconds} s; later "
              "runs read Numba's cache)", file=sys.stderr, flush=True)


_PLANS_KEPT = 8  # plans each thread keeps for tapes recorded alike (``_State.plans``)
_UNPLANNED = object()
_READY: set = set()  # (kernel, argument keys) that ``kernel_ready`` found compiled
_BEHIND: dict = {}  # (kernel, signature) -> the thread compiling it (None: not started)
_QUEUED: list = []  # keys of _BEHIND whose thread ``compile_behind`` starts
_BEHIND_LOCK = threading.Lock()
_BEHIND_AT_EXIT: list = []  # the exit hook ``compile_behind`` registered (once)
# Whether ``kernel_ready`` compiles in a background thread (else here, before it returns).
COMPILE_BEHIND = True


def kernel_ready(kernel: Any, args: tuple, what: str, seconds: int = 8) -> bool:
    """Whether ``kernel`` can run ``args`` now without compiling: compiled in this process,
    or in Numba's cache (then loaded here).  Otherwise queue it to compile in a background
    thread, once (``compile_behind`` starts it), and return False: the caller takes another
    way meanwhile.  Used for kernels that only speed up what another path computes anyway
    (a first backward on a machine pays no ~8 s compile for them).  With ``COMPILE_BEHIND``
    false, compiles here."""
    import numba  # (imported by the kernels already)

    if not hasattr(kernel, "overloads"):  # (NUMBA_DISABLE_JIT: a Python function)
        return True
    # What decides Numba's type of each argument, read without ``numba.typeof`` (~40 us an
    # array here, paid on every backward otherwise).  A key that maps two signatures together
    # could only make a call compile where it is made, never run the wrong code.
    key = (kernel, *[(a.dtype.num, a.ndim, a.flags.c_contiguous, a.flags.f_contiguous,
                      a.flags.writeable, a.flags.aligned) if type(a) is np.ndarray else type(a)
                     for a in args])
    if key in _READY:
        return True
    sig = tuple(numba.typeof(a) for a in args)
    if sig in kernel.overloads:
        _READY.add(key)
        return True
    if any(entry[0] == sig for entry in _cache_index(kernel) or ()) or not COMPILE_BEHIND:
        notice_compile(kernel, what, seconds)
        kernel.compile(sig)
        _READY.add(key)
        return True
    with _BEHIND_LOCK:
        if (kernel, sig) not in _BEHIND:
            _BEHIND[kernel, sig] = None
            _QUEUED.append((kernel, sig, what, seconds))
    return False


def compile_behind() -> None:
    """Start the compiles ``kernel_ready`` queued, each in a daemon thread.  Called at the
    end of a backward: Numba compiles one function at a time, so kernels the backward
    itself needs (settling the tape) compile first, not after."""
    if not _QUEUED:
        return
    with _BEHIND_LOCK:
        if not _BEHIND_AT_EXIT:
            _BEHIND_AT_EXIT.append(atexit.register(_finish_behind))
        for kernel, sig, what, seconds in _QUEUED:
            notice_compile(kernel, what + " in the background", seconds)
            thread = threading.Thread(target=kernel.compile, args=(sig,), daemon=True,
                                      name="tapediff-compile")
            _BEHIND[kernel, sig] = thread
            thread.start()
        _QUEUED.clear()


def _finish_behind() -> None:
    """At exit, let the compiles still running in the background finish: Numba caches them
    then, and the next process finds them.  A process shorter than a compile (~8 s) would
    otherwise start it again every time, on a second core, and never use it."""
    running = [t for t in list(_BEHIND.values()) if t is not None and t.is_alive()]
    if running:
        print("tapediff: finishing a compile started in the background before exiting, once "
              "(later runs read Numba's cache)", file=sys.stderr, flush=True)
        for thread in running:
            thread.join()


class LeafRecord(NamedTuple):
    """Where a tape-less tensor (a leaf or a constant) has its value recorded: its cache,
    valid while the tape lives and the tensor's version and requires_grad are unchanged."""

    tape: Any  # weakref to the tape: a constant used in many short-lived tapes keeps none
    slot: int
    version: int
    requires_grad: bool


class Tape:
    """A recording of operations on tensors, swept in reverse by ``Tensor.backward``.

    Use ``with td.tape() as t:`` to record a block on a fresh tape (tapes nest; the innermost
    records); outside any block each thread records on its own default tape.

    >>> import tapediff as td
    >>> x = td.tensor(2.0, requires_grad=True)
    >>> with td.tape() as t:
    ...     y = x * x + 1.0
    >>> len(t)  # the leaf, the product, the sum
    3
    >>> y.backward(); x.grad
    tensor(4.)
    """

    __slots__ = (
        "op", "in_a", "in_b", "off", "n", "param", "meta_at", "flag", "arena_of", "meta",
        "_wop", "_win_a", "_win_b", "_woff", "_wn", "_wparam", "_wmeta_at", "_warena_of", "_wval",
        "val", "adj", "_spare", "top", "vtop", "vcap",  # float64 arena (the hot path's)
        "val32", "adj32", "_spare32", "vtop32", "vcap32",  # float32 arena
        "mtop", "rcap", "_recent", "_live", "_cached", "_guards", "__weakref__",
        "_aoff", "_padj", "_padj32",  # a planned sweep's adjoint offsets and arenas
        "_handed",  # leaf slot -> its whole adjoint, computed into an array of its own
        "_groups",  # (key, _fusion.Plan or None): the last backward's fused groups
    )

    def __init__(self) -> None:
        self.top = 0  # records in use
        self.mtop = 0  # side-table entries in use
        self._live: list = []  # weakrefs to tensors recorded here (roots for reclamation)
        self._cached: dict = {}  # slot -> weakref to the tape-less tensor it holds
        self._recent = (0, 0, 0)  # decaying maxima of records/values needed at reclaims
        self._guards: list | None = None  # when recording for replay: what each guard saw
        self._alloc_records(_MIN_RECORDS)
        self.meta = np.zeros(_MIN_META, np.int64)
        self.adj = np.empty(0, np.float64)
        self.adj32 = np.empty(0, np.float32)
        self._set_arena(K.KIND_F64, np.empty(_MIN_VALUES, np.float64), 0)
        self._set_arena(K.KIND_F32, np.empty(_MIN_VALUES, np.float32), 0)
        self._spare = self._spare32 = None  # previous arenas, reused by the next reclaim
        self._aoff = None  # adjoint offsets of the last sweep when planned, else None (off)
        self._padj = np.empty(0, np.float64)
        self._padj32 = np.empty(0, np.float32)
        self._handed: dict = {}
        self._groups: tuple | None = None

    def __del__(self) -> None:
        try:
            _donate((self.val, self.adj, self.val32, self.adj32, self._padj, self._padj32,
                     self._spare, self._spare32))
        except Exception:  # (interpreter shutdown, or a tape that failed to initialise)
            pass

    # -- storage -----------------------------------------------------------------------------
    def _alloc_records(self, nrec: int) -> None:
        """(Re)allocate the record arrays with capacity ``nrec``, keeping the first ``top``.

        Records past ``top`` always hold the defaults of a float64 scalar unary record (size
        1, no input b, no side-table block, p = 0, no flags), so the hot recording path
        writes only the fields that differ (``push``).
        """
        top = self.top
        old = None if top == 0 else self._records()
        self.op = np.zeros(nrec, np.int32)
        self.in_a = np.zeros(nrec, np.int64)
        self.in_b = np.full(nrec, -1, np.int64)
        self.off = np.zeros(nrec, np.int64)
        self.n = np.ones(nrec, np.int64)
        self.param = np.zeros(nrec, np.float64)
        self.meta_at = np.full(nrec, -1, np.int64)
        self.flag = np.zeros(nrec, np.uint8)
        self.arena_of = np.full(nrec, K.KIND_F64, np.uint8)
        if old is not None:
            for new, src in zip(self._records(), old):
                new[:top] = src[:top]
        self.rcap = nrec
        # memoryviews: item assignment through them is ~2x cheaper than through ndarrays
        self._wop = memoryview(self.op)
        self._win_a = memoryview(self.in_a)
        self._win_b = memoryview(self.in_b)
        self._woff = memoryview(self.off)
        self._wn = memoryview(self.n)
        self._wparam = memoryview(self.param)
        self._wmeta_at = memoryview(self.meta_at)
        self._warena_of = memoryview(self.arena_of)

    def _records(self) -> tuple:
        return (self.op, self.in_a, self.in_b, self.off, self.n, self.param, self.meta_at,
                self.flag, self.arena_of)

    def _set_arena(self, kind: int, val: np.ndarray, used: int) -> None:
        if kind == K.KIND_F64:
            self.val, self.vcap, self.vtop = val, len(val), used
            self._wval = memoryview(val)
            if len(self.adj) != len(val):  # sized to the arena by the next backward
                self.adj = _resized(self.adj, len(val))
        else:
            self.val32, self.vcap32, self.vtop32 = val, len(val), used
            if len(self.adj32) != len(val):
                self.adj32 = _resized(self.adj32, len(val))

    def arena(self, kind: int) -> tuple:
        """(values, adjoints) of the arena of ``kind`` (adjoints sized by ``sweep``)."""
        return (self.val, self.adj) if kind == K.KIND_F64 else (self.val32, self.adj32)

    def __len__(self) -> int:
        """Number of records on the tape (released ones included until reclaimed)."""
        return self.top

    @property
    def nbytes(self) -> int:
        """Bytes held by the tape's arrays (records, side table, value and adjoint arenas)."""
        arrays = [*self._records(), self.meta, self.val, self.adj, self.val32, self.adj32,
                  self._spare, self._spare32, self._padj, self._padj32]
        return sum(a.nbytes for a in arrays if a is not None)

    def __repr__(self) -> str:
        return f"<tapediff.Tape: {self.top} records, {self.nbytes} bytes>"

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> "Tape":
        st = _state()
        st.stack.append(self)
        st.set_tape(self)
        return self

    def __exit__(self, *exc) -> None:
        st = _state()
        if not st.stack or st.stack[-1] is not self:
            raise RuntimeError("tapes must be closed in the reverse order they were opened")
        st.stack.pop()
        st.set_tape(st.stack[-1] if st.stack else st.default)

    # -- recording ---------------------------------------------------------------------------
    def reserve(self, nrec: int, nval: int, nmeta: int = 0, nval32: int = 0) -> None:
        """Make room for ``nrec`` records, ``nval`` float64 and ``nval32`` float32 values and
        ``nmeta`` side-table entries.

        Every operation reserves all it will append before appending anything, so slots
        handed out while recording one operation stay valid until its record is written.
        """
        if (self.top + nrec > self.rcap or self.vtop + nval > self.vcap
                or self.vtop32 + nval32 > self.vcap32 or self.mtop + nmeta > len(self.meta)):
            self._reclaim(nrec, nval, nmeta, nval32)

    def append(self, op: int, a: int, b: int, size: int, p: float = 0.0, m: int = -1,
               kind: int = K.KIND_F64) -> int:
        """Append a record (room already reserved) and return its slot; the value is unset."""
        i = self.top
        self.top = i + 1
        self._wop[i] = op
        self._win_a[i] = a
        self._win_b[i] = b
        if kind == K.KIND_F64:
            v = self.vtop
            self.vtop = v + size
        else:
            v = self.vtop32
            self.vtop32 = v + size
            self._warena_of[i] = kind
        self._woff[i] = v
        self._wn[i] = size
        self._wparam[i] = p
        self._wmeta_at[i] = m
        return i

    def push(self, op: int, a: int, value: float) -> int:
        """Append a float64 scalar record with input ``a`` and its value (room reserved);
        return its slot.  Fields left at their defaults are not written (a binary or
        constant-parameter record sets ``ib``/``p`` itself)."""
        i = self.top
        self.top = i + 1
        v = self.vtop
        self.vtop = v + 1
        self._wop[i] = op
        self._win_a[i] = a
        self._woff[i] = v
        self._wval[v] = value
        return i

    def put_meta(self, payload) -> int:
        """Store an int64 block in the side table (room already reserved); return its offset."""
        m = self.mtop
        k = len(payload)
        self.meta[m] = k
        self.meta[m + 1:m + 1 + k] = payload
        self.mtop = m + 1 + k
        return m

    def inputs(self, i: int) -> list:
        """Record ``i``'s input slots, in the order its rule takes them: a, b, then those
        listed in its payload."""
        o = int(self.op[i])
        m = int(self.meta_at[i])
        listed = []
        if m >= 0 and K.TRAITS[o] & K.META_INPUTS:
            listed = [int(s) for s in self.meta[m + 2:m + 2 + int(self.meta[m + 1])]]
        if o == K.OP_CONCAT:  # its payload lists every input (a and b are the first two)
            return listed
        return [int(s) for s in (self.in_a[i], self.in_b[i]) if s >= 0] + listed

    def value_view(self, slot: int, shape: tuple) -> np.ndarray:
        """The arena range of ``slot`` as an array of ``shape`` (writable; callers freeze it)."""
        o = int(self.off[slot])
        val = self.val if self.arena_of[slot] == K.KIND_F64 else self.val32
        return val[o:o + int(self.n[slot])].reshape(shape)

    def adjoint_view(self, slot: int) -> np.ndarray:
        """The flat adjoint range of ``slot`` (valid after a sweep that reached it, until the
        next sweep; after a planned sweep, for the leaves only)."""
        handed = self._handed.get(slot)
        if handed is not None:
            return handed.reshape(-1)
        kind = int(self.arena_of[slot])
        o = int(self.off[slot] if self._aoff is None else self._aoff[slot])
        return self._adjoints(kind)[o:o + int(self.n[slot])]

    def _adjoints(self, kind: int) -> np.ndarray:
        """The adjoint arena of ``kind`` the last sweep used."""
        if self._aoff is None:
            return self.adj if kind == K.KIND_F64 else self.adj32
        return self._padj if kind == K.KIND_F64 else self._padj32

    def scalar_adjoints(self, slots: np.ndarray) -> list:
        """The adjoints of float64 scalar ``slots`` after a sweep, as Python floats."""
        offs = self.off[slots] if self._aoff is None else self._aoff[slots]
        return self._adjoints(K.KIND_F64)[offs].tolist()

    def gradient(self, y: Any, xs: Any, gradient: Any = None, retain_graph: bool | None = None,
                 create_graph: bool = False) -> Any:
        """The gradient of ``y`` (recorded here) with respect to the tensor ``xs`` or each of
        the sequence ``xs``, as new tensors; no ``.grad`` is touched.

        ``gradient`` weights a non-scalar ``y`` (as in ``backward``).  The records swept are
        released unless ``retain_graph`` (by default ``create_graph``).  An ``x`` that ``y``
        does not depend on gets zeros.  With ``create_graph=True`` the gradients are
        recorded tensors, differentiable again (``torch.autograd.grad``'s option).

        >>> import tapediff as td
        >>> x = td.tensor([1.0, 2.0], requires_grad=True)
        >>> with td.tape() as t:
        ...     y = (x * x).sum()
        >>> t.gradient(y, x)
        tensor([2., 4.])
        """
        gradient_on = getattr(y, "_gradient_on", None)  # Tensor's: the storage knows no tensors
        if gradient_on is None:
            raise TypeError(f"gradient() needs a Tensor output, got {type(y).__name__}")
        return gradient_on(self, xs, gradient, retain_graph, create_graph)

    @property
    def records_for_replay(self) -> bool:
        """Whether this tape records a function for replay: reads of values then record
        guards, and differentiating or leaving grad mode inside it is refused."""
        return self._guards is not None

    # -- replay ------------------------------------------------------------------------------
    def forward(self, start: int = 0, fused: Any = None) -> int:
        """Recompute every record's value from ``start`` on, from the values of the leaves and
        constants in the arena (replay writes new inputs there first); with ``fused`` (a
        ``_fusion.Plan`` of this tape), every record along its schedule.

        Returns -1, or the index of the first guard record whose value no longer matches
        what was seen when recording (the values above it are then stale).
        """
        if fused is None:
            return self._forward(start, self.top)
        for lo, hi, g in fused.sched.tolist():
            if g >= 0:
                self._fused(fused, g, False, None)
                continue
            r = self._forward(lo, hi)
            if r >= 0:
                return r
        return -1

    def _forward(self, i: int, top: int) -> int:
        """``forward`` over records i .. top - 1."""
        if K.forward_sweep not in _NOTICED:
            notice_compile(K.forward_sweep, "the forward sweep", 12)
        while i < top:
            kind = int(self.arena_of[i])
            r = K.forward_sweep(i, top, kind, self.op, self.in_a, self.in_b, self.off, self.n,
                                self.param, self.meta_at, self.arena_of, self.meta,
                                self.arena(kind)[0], BIG, P.TO_NUMPY)
            if r == K.SWEEP_DONE:
                return -1
            if r == K.UNKNOWN_OPCODE:
                raise AssertionError("forward sweep met an opcode it has no rule for")
            if r < 0:
                return -3 - r
            if int(self.arena_of[r]) != kind and not K.TRAITS[self.op[r]] & K.PYTHON_RULE:
                i = r  # resume on the other arena (a ufunc rule there yields again)
                continue
            self._python_value(r)
            i = r + 1
        return -1

    def _python_value(self, i: int) -> None:
        """The forward rules that are NumPy calls: matmul (BLAS), casts between arenas, and
        the transcendental functions on large arrays (NumPy's SIMD loops)."""
        a = int(self.in_a[i])
        rule = P.BY_OP[int(self.op[i])].forward
        if rule is not None:
            out, inputs = self._python_operands(i)
            rule(out, *inputs, float(self.param[i]))
            return
        out = self.value_view(i, (int(self.n[i]),))
        uf = P.NUMPY_RULES.get(int(self.op[i]))
        if uf is not None:
            uf(self.value_view(a, (int(self.n[a]),)), out=out)
            return
        if self.op[i] == K.OP_CAST:
            out[...] = self.value_view(a, (int(self.n[a]),))
            return
        bs, mm, kk, nn = self._matmul_dims(i)
        b = int(self.in_b[i])
        np.matmul(self.value_view(a, (bs, mm, kk)), self.value_view(b, (bs, kk, nn)),
                  out=out.reshape(bs, mm, nn))

    def _python_operands(self, i: int) -> tuple:
        """Record ``i``'s output and input values, shaped from its layout (``python_layout``)."""
        ins = [int(s) for s in (self.in_a[i], self.in_b[i]) if s >= 0]
        shapes = P.python_shapes(self.meta, int(self.meta_at[i]), 1 + len(ins))
        return (self.value_view(i, shapes[0]),
                [self.value_view(s, shape) for s, shape in zip(ins, shapes[1:])])

    def _matmul_dims(self, i: int) -> tuple:
        """(batch, m, k, n) of matmul record ``i``: (batch, m, k) @ (batch, k, n)."""
        m = int(self.meta_at[i])
        return tuple(int(v) for v in self.meta[m + 1:m + 5])

    # -- forward mode --------------------------------------------------------------------------
    def tangent(self, start: int, stop: int, tan: np.ndarray, tan32: np.ndarray) -> None:
        """Forward mode: compute the tangent of every record ``start`` .. ``stop - 1`` from its
        inputs' tangents.

        ``tan`` and ``tan32`` are tangent arenas the caller owns, of the sizes of the value
        arenas (float64 and float32), at the same offsets.  The caller writes the tangents of
        the leaves (left untouched here) and of the records below ``start``; every other
        record's tangent is overwritten.  The jitted sweep runs over the records of one arena
        kind and hands back at records of the other kind and at the rules that are NumPy
        calls (matmul, casts, the table's ``tangent`` rules), which are run here.  Raises
        NotImplementedError at a primitive without a tangent rule.
        """
        if K.tangent_sweep not in _NOTICED:
            notice_compile(K.tangent_sweep, "the tangent sweep", 7)
        i = start
        while i < stop:
            kind = int(self.arena_of[i])
            r = K.tangent_sweep(i, stop, kind, self.op, self.in_a, self.in_b, self.off, self.n,
                                self.param, self.meta_at, self.arena_of, self.meta,
                                self.arena(kind)[0], tan if kind == K.KIND_F64 else tan32)
            if r == K.SWEEP_DONE:
                return
            if r == K.UNKNOWN_OPCODE:
                raise AssertionError("tangent sweep met an opcode it has no rule for")
            if int(self.arena_of[r]) != kind and not K.TRAITS[self.op[r]] & K.PYTHON_RULE:
                i = r  # resume on the other arena
                continue
            self._python_tangent(r, tan, tan32)
            i = r + 1

    def _tangent_view(self, slot: int, tan: np.ndarray, tan32: np.ndarray,
                      shape: tuple) -> np.ndarray:
        """The range of ``slot`` in the tangent arena of its kind, as an array of ``shape``."""
        o = int(self.off[slot])
        t = tan if self.arena_of[slot] == K.KIND_F64 else tan32
        return t[o:o + int(self.n[slot])].reshape(shape)

    def _python_tangent(self, i: int, tan: np.ndarray, tan32: np.ndarray) -> None:
        """The tangent rules that are NumPy calls: matmul (BLAS), casts between arenas, and
        the ``tangent`` rules of the table's primitives (linear algebra, special functions)."""
        op = int(self.op[i])
        a, b = int(self.in_a[i]), int(self.in_b[i])
        if op == K.OP_CAST:
            flat = (int(self.n[i]),)
            self._tangent_view(i, tan, tan32, flat)[...] = self._tangent_view(a, tan, tan32, flat)
            return
        if op == K.OP_MATMUL:  # (bs, m, k) @ (bs, k, n): dC = dA B + A dB
            bs, mm, kk, nn = self._matmul_dims(i)
            tout = self._tangent_view(i, tan, tan32, (bs, mm, nn))
            va, vb = self.value_view(a, (bs, mm, kk)), self.value_view(b, (bs, kk, nn))
            ta = self._tangent_view(a, tan, tan32, (bs, mm, kk))
            tb = self._tangent_view(b, tan, tan32, (bs, kk, nn))
            da, db = self.op[a] != K.OP_CONST, self.op[b] != K.OP_CONST  # constants: 0
            if da:
                np.matmul(ta, vb, out=tout)
            if db:
                if da:
                    tout += np.matmul(va, tb)
                else:
                    np.matmul(va, tb, out=tout)
            if not (da or db):
                tout[...] = 0.0
            return
        p = P.BY_OP[op]
        if p.tangent is None:
            raise NotImplementedError(
                f"forward-mode derivative of {p.grad_fn} is not implemented (its primitive "
                "has no tangent rule); use reverse mode (backward, td.grad) instead")
        out, inputs = self._python_operands(i)
        tins = [self._tangent_view(s, tan, tan32, x.shape)
                for s, x in zip([s for s in (a, b) if s >= 0], inputs)]
        p.tangent(self._tangent_view(i, tan, tan32, out.shape), out, inputs, tins,
                  float(self.param[i]))

    # -- Jacobians ---------------------------------------------------------------------------
    def _jitted(self, lo: int, hi: int, kind: int, slots: list) -> bool:
        """Whether records ``lo`` .. ``hi - 1`` and ``slots`` are all of arena ``kind`` and no
        record there has a Python rule: one jitted call can then run all the sweeps."""
        ops = self.op[lo:hi]
        return bool((self.arena_of[lo:hi] == kind).all()
                    and not (K.TRAITS[ops] & K.PYTHON_RULE).any()
                    and all(int(self.arena_of[s]) == kind for s in slots))

    def _ranges(self, slots: list) -> tuple:
        """(offsets, sizes) of ``slots`` in their arenas, as int64 arrays."""
        idx = np.asarray(slots, np.int64)
        return np.ascontiguousarray(self.off[idx]), np.ascontiguousarray(self.n[idx])

    def _dtype_of(self, slots: list) -> np.dtype:
        kinds = {int(self.arena_of[s]) for s in slots}
        return np.dtype(np.float32 if kinds == {K.KIND_F32} else np.float64)

    def jacobian_rows(self, root: int, seeds: np.ndarray, slots) -> np.ndarray:
        """Vector-Jacobian products of record ``root`` with respect to ``slots``: row r is
        ``seeds[r] @ J`` (seeds of shape (m, n[root])), the derivatives with respect to each
        slot side by side, shape (m, sum of n[slots]); 0 for a slot ``root`` does not depend
        on.  The rows of the Jacobian for ``seeds`` = the identity.

        One reverse sweep per row, nothing released; all of them in one jitted call when the
        records up to ``root`` are of one arena kind without Python rules, else a loop over
        ``sweep``.  The result has the slots' dtype (float64 if they differ).
        """
        slots = [int(s) for s in slots]
        nr = int(self.n[root])
        seeds = np.asarray(seeds).reshape(-1, nr)
        kind = int(self.arena_of[root])
        dtype = self._dtype_of(slots) if slots else self.arena(kind)[0].dtype
        sizes = [int(self.n[s]) for s in slots]
        if self._jitted(0, root + 1, kind, slots):
            self._size_adjoints()
            val, adj = self.arena(kind)
            leaf_off, leaf_n = self._ranges(slots)
            out = np.empty((len(seeds), sum(sizes)), val.dtype)
            if K.reverse_rows not in _NOTICED:
                notice_compile(K.reverse_rows, "the batched reverse sweep", 3)
            r = K.reverse_rows(root, 0, kind, self.op, self.in_a, self.in_b, self.off, self.n,
                               self.param, self.meta_at, self.flag, self.arena_of, self.meta,
                               val, adj, np.ascontiguousarray(seeds, val.dtype), leaf_off,
                               leaf_n, out, K.NEVER)
            if r == K.UNKNOWN_OPCODE:
                raise AssertionError("reverse sweep met an opcode it has no rule for")
            if r != K.SWEEP_DONE:
                raise RuntimeError(_ERR_RELEASED)
            return out
        out = np.zeros((len(seeds), sum(sizes)), dtype)
        for row, seed in zip(out, seeds):
            touched = np.zeros(root + 1, np.uint8)
            if self.sweep(root, seed, True, touched) is None:
                raise RuntimeError(_ERR_RELEASED)
            p = 0
            for s, k in zip(slots, sizes):
                if s <= root and touched[s]:
                    row[p:p + k] = self.adjoint_view(s)
                p += k
        return out

    def jacobian_columns(self, start: int, stop: int, seeds: np.ndarray, slots,
                         out_slot: int) -> np.ndarray:
        """Jacobian-vector products of record ``out_slot`` with respect to ``slots``: row r is
        ``J @ seeds[r]`` (seeds of shape (m, sum of n[slots]), split over the slots), shape
        (m, n[out_slot]), from tangent sweeps over records ``start`` .. ``stop - 1`` (none
        above ``out_slot``).  The columns of the Jacobian, as rows, for ``seeds`` = the
        identity.

        ``slots`` are leaves or records below ``start``; every other input has tangent 0.  A
        slot listed twice gets the sum of its blocks of seeds.  All the sweeps run in one
        jitted call when the records swept are of one arena kind without Python rules, else
        in a loop over ``tangent``.  The result has the dtype of ``out_slot``'s arena.
        """
        slots = [int(s) for s in slots]
        stop = min(stop, out_slot + 1)  # the records above cannot change out_slot's tangent
        for s in slots:
            if start <= s < stop and self.op[s] != K.OP_LEAF:
                raise ValueError(f"slot {s} is computed by the records swept: its tangent "
                                 "would be overwritten")
        sizes = [int(self.n[s]) for s in slots]
        seeds = np.asarray(seeds).reshape(-1, sum(sizes))
        unique = list(dict.fromkeys(slots))
        if len(unique) < len(slots):  # J [v1; v2] = J_s (v1 + v2) for a slot s listed twice
            at = dict(zip(unique, np.cumsum([0] + [int(self.n[s]) for s in unique])))
            merged = np.zeros((len(seeds), sum(int(self.n[s]) for s in unique)))
            p = 0
            for s, k in zip(slots, sizes):
                merged[:, at[s]:at[s] + k] += seeds[:, p:p + k]
                p += k
            seeds, slots, sizes = merged, unique, [int(self.n[s]) for s in unique]
        kind = int(self.arena_of[out_slot])
        tan, tan32 = np.zeros(len(self.val)), np.zeros(len(self.val32), np.float32)
        no = int(self.n[out_slot])
        if self._jitted(start, stop, kind, slots):
            val, t = self.arena(kind)[0], (tan if kind == K.KIND_F64 else tan32)
            leaf_off, leaf_n = self._ranges(slots)
            out = np.empty((len(seeds), no), val.dtype)
            if K.tangent_columns not in _NOTICED:
                notice_compile(K.tangent_columns, "the batched tangent sweep", 2)
            r = K.tangent_columns(start, stop, kind, self.op, self.in_a, self.in_b, self.off,
                                  self.n, self.param, self.meta_at, self.arena_of, self.meta,
                                  val, t, np.ascontiguousarray(seeds, val.dtype), leaf_off,
                                  leaf_n, int(self.off[out_slot]), no, out)
            if r != K.SWEEP_DONE:
                raise AssertionError("tangent sweep met an opcode it has no rule for")
            return out
        out = np.empty((len(seeds), no), self.arena(kind)[0].dtype)
        for row, seed in zip(out, seeds):
            p = 0
            for s, k in zip(slots, sizes):
                self._tangent_view(s, tan, tan32, (k,))[...] = seed[p:p + k]
                p += k
            self.tangent(start, stop, tan, tan32)
            row[...] = self._tangent_view(out_slot, tan, tan32, (no,))
        return out

    # -- differentiation -----------------------------------------------------------------------
    def sweep(self, root: int, seed: np.ndarray, retain_graph: bool,
              touched: np.ndarray | None = None, plan: bool = False, fused: Any = None):
        """Run the reverse sweep from ``root`` seeded with ``seed``; return the leaf slots reached.

        The jitted sweep runs over the records of one arena kind and hands back at records of
        the other kind and at the rules that are NumPy calls (matmul, casts), which are run
        here.  Returns None, with nothing changed, when the sweep reaches a released record.
        Unless ``retain_graph``, every non-leaf record swept is released.  ``touched`` (zeros,
        at least ``root + 1`` long) may be passed to learn which slots got an adjoint.

        With ``plan`` (``Tensor.backward``, which reads only the leaves' adjoints), a large
        tape of array records keeps each adjoint range only while it is live
        (``K.plan_adjoints``): the adjoint arenas need the largest set of adjoints live at one
        time rather than the size of the values, and the sweep works in the same warm range.
        ``adjoint_view`` then holds for the leaves only, until the next sweep.

        ``fused`` (a ``_fusion.Plan`` of a recording kept for replay) runs the records along
        its schedule, its groups by ``K.fused_group``.
        """
        self._aoff = None
        self._handed = {}
        aoff = self.off
        if plan and self._guards is None:
            aoff, fused = self._plan(root)
        if self._aoff is None:
            self._size_adjoints()
        self.adjoint_view(root)[:] = seed.ravel()
        if touched is None:
            touched = np.zeros(root + 1, np.uint8)
        touched[root] = 1
        leaf_slots = np.empty(root + 1, np.int64)
        nleaf = np.zeros(1, np.int64)
        if K.reverse_sweep not in _NOTICED:
            notice_compile(K.reverse_sweep, "the reverse sweep", 8)
        if fused is None:
            if not self._sweep_down(root, 0, touched, leaf_slots, nleaf, aoff, plan):
                return None
        else:
            for lo, hi, g in reversed(fused.sched.tolist()):
                start = min(hi - 1, root)  # (records past the output get no adjoint)
                if g >= 0:
                    self._fused(fused, g, True, touched)
                elif start >= lo and not self._sweep_down(start, lo, touched, leaf_slots,
                                                          nleaf, aoff, plan):
                    return None
        if fused is not None and fused.reach is not None:  # (registers are not marked)
            touched[:root + 1] |= fused.reach
        if not retain_graph:
            swept = touched.view(bool) & (self.op[:root + 1] != K.OP_LEAF)
            self.flag[:root + 1][swept] |= K.FLAG_RELEASED
        return leaf_slots[:nleaf[0]]

    def _fused(self, fused: Any, g: int, reverse: bool, touched: np.ndarray | None) -> None:
        """Fused group ``g`` of plan ``fused``, forward or in reverse (``K.fused_group``)."""
        K.fused_group(*self._fused_args(fused, g, reverse, touched))

    def _fused_args(self, fused: Any, g: int, reverse: bool, touched: np.ndarray | None) -> tuple:
        kind = int(fused.groups[g, K.G_KIND])
        return (g, reverse, fused.groups, fused.fu, fused.fc, fused.ru, fused.rc, self.off,
                self.n, self.arena(kind)[0], self._adjoints(kind),
                np.zeros(0, np.uint8) if touched is None else touched, fused.fresh, fused.tmp)

    def _sweep_down(self, i: int, stop: int, touched: np.ndarray, leaf_slots: np.ndarray,
                    nleaf: np.ndarray, aoff: np.ndarray, plan: bool) -> bool:
        """``sweep`` over records i down to ``stop``; False at a released record."""
        while i >= stop:
            kind = int(self.arena_of[i])
            val, adj = self.arena(kind)[0], self._adjoints(kind)
            r = K.reverse_sweep(i, stop, kind, self.op, self.in_a, self.in_b, self.off, self.n,
                                self.param, self.meta_at, self.flag, self.arena_of, self.meta, val,
                                adj, touched, leaf_slots, nleaf, BIG, aoff)
            if r == K.SWEEP_DONE:
                break
            if r == K.UNKNOWN_OPCODE:
                raise AssertionError("reverse sweep met an opcode it has no rule for")
            if r < 0:
                return False
            if int(self.arena_of[r]) != kind:
                i = r  # resume on the other arena
                continue
            if K.TRAITS[self.op[r]] & K.LATE_RULE:
                if K.reverse_late not in _NOTICED:
                    notice_compile(K.reverse_late, "the reverse rules of max, min, prod and "
                                   "the cumulative sums and products", 3)
                K.reverse_late(r, self.op, self.in_a, self.off, self.n, self.meta_at, self.flag,
                               self.meta, val, adj, touched, aoff)
            else:
                self._python_rule(r, touched, plan)
            i = r - 1
        return True

    def _plan(self, root: int) -> tuple:
        """Plan a backward from ``root`` (see ``sweep``): its fused groups, its adjoint
        storage, both or neither.  Returns the adjoint offsets (``off`` unless planned by
        liveness, then in ``_padj``) and the ``_fusion.Plan`` to sweep along, or None.

        A tape of at most ``FUSE_RECORDS`` records holding ``FUSE_VALUES`` values or more
        (a few large array records) is grouped as replay groups its recordings: a chain
        of elementwise records then runs its reverse rules block by block, its inner values
        recomputed and its inner adjoints in registers, where the sweep would write and
        read back an adjoint range per record.  Transcendental records are left out (their
        values are NumPy's; a recomputation could differ in the last bit), so a register
        holds what NumPy computed (see ``_fusion``).  Groups keep adjoints at the values'
        offsets: they are used only when the adjoint ranges they touch (``Plan.untouched``
        aside) are at most ``FUSE_ROOM`` times what planning by liveness would hold.  The
        first such backward of a process on a machine without the fused kernels compiled
        sweeps record by record while ``kernel_ready`` compiles them in the background."""
        values = self.vtop + self.vtop32
        planned = root < PLAN_MAX and values >= PLAN_AT
        fusing = root < FUSE_RECORDS and values >= FUSE_VALUES
        if not (planned or fusing):
            return self.off, None
        key = None
        if fusing:  # a loop's steps record the same records at the same offsets
            r = root + 1
            # (the fusion settings and the memory rule's inputs too: tests change them)
            key = b"".join([np.array([root, self.vtop, self.vtop32, planned, _fusion.BLOCK,
                                      _fusion.FUSE_MIN, _fusion.FUSE_WORK]).tobytes(),
                            np.float64(FUSE_ROOM).tobytes()] + [
                a[:r].tobytes() for a in (self.op, self.in_a, self.in_b, self.off, self.n,
                                          self.param, self.meta_at, self.flag, self.arena_of)]
                + [self.meta[:self.mtop].tobytes()])
            if self._groups is None or self._groups[0] != key:
                # another tape of this thread may have recorded the same records (the
                # private tapes of td.grad and value_and_grad: a fresh one every call)
                known = thread_state.plans.get(key, _UNPLANNED)
                if known is not _UNPLANNED:
                    self._groups = key, known
            if self._groups is not None and self._groups[0] == key:
                groups = self._groups[1]
                if groups is not None and self._with_registers(groups) is not None:
                    return self.off, groups
                if not planned:  # (the planner below would only serve the groups)
                    return self.off, None
        aoff = np.empty(root + 1, np.int64)
        peak = np.zeros(2, np.int64)
        reach = np.empty(root + 1, np.uint8)
        args = (root, self.op, self.in_a, self.in_b, self.n, self.flag, self.arena_of,
                self.meta_at, self.meta, aoff, peak, reach)
        if not planned and not kernel_ready(K.plan_adjoints, args, "the adjoint planner", 2):
            return self.off, None  # (only for groups: not worth a first compile here)
        if K.plan_adjoints not in _NOTICED:
            notice_compile(K.plan_adjoints, "the adjoint planner", 2)
        if K.plan_adjoints(*args) != 0:
            return self.off, None  # (the sweep refuses what the planner did)
        if fusing and (self._groups is None or self._groups[0] != key):
            groups, chosen = _fusion.plan(self, root, reach, 0, root + 1), None
            if groups.fused:
                kept = reach.view(bool) & ~groups.untouched
                need = [int(self.n[:root + 1][kept & (self.arena_of[:root + 1] == k)].sum())
                        for k in (K.KIND_F64, K.KIND_F32)]
                if not planned or all(need[k] <= FUSE_ROOM * peak[k] for k in range(2)):
                    chosen = groups._replace(reach=reach.view(bool))
            self._groups = key, chosen
            plans = thread_state.plans
            if len(plans) >= _PLANS_KEPT:
                del plans[next(iter(plans))]  # the oldest
            plans[key] = chosen
            if chosen is not None and self._with_registers(chosen) is not None:
                return self.off, chosen
        if not planned:
            return self.off, None
        self._padj = _at_least(self._padj, int(peak[K.KIND_F64]), np.float64)
        self._padj32 = _at_least(self._padj32, int(peak[K.KIND_F32]), np.float32)
        self._aoff = aoff
        return aoff, None

    def _with_registers(self, groups: Any) -> Any:
        """``groups`` (a ``_fusion.Plan``), with room past the arenas' values for its
        registers; None while ``K.fused_group`` is compiling for one of its kinds."""
        kinds = groups.groups[:, K.G_KIND].tolist()
        for kind in set(kinds):
            args = self._fused_args(groups, kinds.index(kind), True, np.zeros(0, np.uint8))
            if not kernel_ready(K.fused_group, args, "the fused sweep kernels"):
                return None
        for kind, registers in zip((K.KIND_F64, K.KIND_F32), groups.registers):
            if registers:
                self.room_past(kind, registers)
        return groups

    def _size_adjoints(self) -> None:
        """Give the adjoint arenas the sizes of the value arenas (contents unset)."""
        if len(self.adj) != len(self.val) and self.vtop:
            self.adj = _arena(len(self.val), np.float64)
        if len(self.adj32) != len(self.val32) and self.vtop32:
            self.adj32 = _arena(len(self.val32), np.float32)

    def room_past(self, kind: int, items: int) -> None:
        """Room for ``items`` more values (and adjoints) past the last value of the arena of
        ``kind``, every offset kept: scratch that replay's fused groups use as registers."""
        val = self.arena(kind)[0]
        used = self.vtop if kind == K.KIND_F64 else self.vtop32
        if len(val) < used + items:
            new = _grown(val, used + items)
            if new is None:
                new = _arena(used + items, val.dtype)
                new[:used] = val[:used]
            self._set_arena(kind, new, used)
        self._size_adjoints()

    def _python_rule(self, i: int, touched: np.ndarray, plan: bool = False) -> None:
        """The reverse rules that are NumPy calls: matmul (BLAS), casts between arenas, the
        table's rules, and the ``NUMPY_ADJOINT`` rules on large records (``plan``: see
        ``_matmul_into``)."""
        op = int(self.op[i])
        if K.TRAITS[op] & K.NUMPY_ADJOINT:
            self._numpy_adjoint(i, touched)
            return
        g = self.adjoint_view(i)
        a, b = int(self.in_a[i]), int(self.in_b[i])
        rule = P.BY_OP[op].reverse
        if rule is not None:
            out, inputs = self._python_operands(i)
            slots = [s for s in (a, b) if s >= 0]
            needs = tuple(self._gets_adjoint(s) for s in slots)
            adjoints = rule(g.reshape(out.shape), out, *inputs, float(self.param[i]), needs)
            for s, need, adj in zip(slots, needs, adjoints):
                if need and adj is not None:
                    _accumulate(self, s, np.asarray(adj), touched)
            return
        if op == K.OP_CAST:
            if self._gets_adjoint(a):
                _accumulate(self, a, g, touched)
            return
        # OP_MATMUL: (bs, m, k) @ (bs, k, n); dA = G B^T, dB = A^T G
        bs, mm, kk, nn = self._matmul_dims(i)
        g = g.reshape(bs, mm, nn)
        if self._gets_adjoint(a):
            bv = self.value_view(b, (bs, kk, nn)).transpose(0, 2, 1)
            self._matmul_into(a, (bs, mm, kk), g, bv, touched, plan)
        if self._gets_adjoint(b):
            av = self.value_view(a, (bs, mm, kk)).transpose(0, 2, 1)
            self._matmul_into(b, (bs, kk, nn), av, g, touched, plan)

    def _numpy_adjoint(self, i: int, touched: np.ndarray) -> None:
        """Record ``i``'s reverse rule (a unary ``NUMPY_ADJOINT`` one) on whole arrays: the
        rule's Python form (``P.ELEMENTWISE_RULES``, the one a recorded backward runs on
        tensors), whose exp/cosh/sinh are NumPy's SIMD loops.  Equal to the compiled rule up
        to those functions' last-bit rounding, as replay's forward hand-back is."""
        a = int(self.in_a[i])
        if not self._gets_adjoint(a):
            return
        nn = int(self.n[i])
        x = self.value_view(a, (int(self.n[a]),)).view(_Arrays)
        g = self.adjoint_view(i).view(_Arrays)
        y = self.value_view(i, (nn,)).view(_Arrays)
        da = P.ELEMENTWISE_RULES[int(self.op[i])](g, x, 0.0, y, float(self.param[i]), np)[0]
        da = np.asarray(da)
        _accumulate(self, a, da if da.size == self.n[a] else np.sum(da, keepdims=True), touched)

    def _gets_adjoint(self, s: int) -> bool:
        return self.op[s] != K.OP_CONST and not self.flag[s] & K.FLAG_CONSTANT

    def _matmul_into(self, s: int, shape: tuple, x: np.ndarray, y: np.ndarray,
                     touched: np.ndarray, plan: bool) -> None:
        """adj[s] (+)= x @ y, written by BLAS straight into the adjoint on a first touch.

        With ``plan`` (a backward: only the leaves' adjoints are read after it), a leaf that
        this product is the only record to read gets its adjoint in an array of its own
        (``_handed``), which ``backward`` makes its ``.grad`` without a copy, as PyTorch's
        gradient accumulation does; from ``HANDOVER_AT`` elements (a smaller copy costs less
        than finding the leaf's readers)."""
        if touched[s]:
            self.adjoint_view(s).reshape(shape)[...] += np.matmul(x, y)
            return
        touched[s] = 1
        if plan and self.op[s] == K.OP_LEAF and self.n[s] >= HANDOVER_AT and self._read_once(s):
            self._handed[s] = np.matmul(x, y)
        else:
            np.matmul(x, y, out=self.adjoint_view(s).reshape(shape))

    def _read_once(self, s: int) -> bool:
        """Whether exactly one record on the tape that is not released (a released record is
        never swept again) reads slot ``s``."""
        top = self.top
        near = ((self.in_a[:top] == s) | (self.in_b[:top] == s)
                | (K.TRAITS[self.op[:top]] & K.META_INPUTS != 0))
        near &= (self.flag[:top] & K.FLAG_RELEASED) == 0
        return sum(self.inputs(r).count(s) for r in np.flatnonzero(near).tolist()) == 1

    # -- reclamation -------------------------------------------------------------------------
    def reclaim(self) -> None:
        """Drop every record no live tensor can reach and shrink the arrays to what is left.

        The tape also reclaims by itself whenever an operation does not fit, and then keeps
        its size while recent steps needed it; call this to return memory now, e.g. after a
        large computation.  It also lets go of the memory kept from the private tapes of
        finished ``value_and_grad``/``grad``/``jacrev``... calls (kept for the next call).
        """
        with _POOL_LOCK:
            _POOL.clear()
        self._recent = (0, 0, 0)
        self._padj = np.empty(0, np.float64)  # a planned backward sizes them again
        self._padj32 = np.empty(0, np.float32)
        self._reclaim()

    def settle(self) -> None:
        """At a point where no operation is being recorded (the end of ``backward``): when the
        tape holds at least ``SETTLE_AT`` values (``SETTLE_ARRAYS_AT`` for a tape of few
        records), drop what no live tensor can reach and move what is left to the front of
        the same arenas, and let go of the spare arenas.  The next step then records into the
        same warm pages, with one arena resident.

        Only here may values move in place: while an operation records, it may hold views
        of its inputs' values taken before its ``reserve`` (a reclaim there compacts into the
        spare arena and leaves the old one intact until the next reclaim).  A settle keeps the
        arenas' sizes (what the steps need); ``reclaim()`` returns memory explicitly."""
        held = self.vtop + self.vtop32
        if self._guards is not None or held < SETTLE_AT and (
                held < SETTLE_ARRAYS_AT or self.top > PLAN_MAX):
            return
        self._reclaim(in_place=True)

    def _extend(self, nrec: int, nval: int, nmeta: int, nval32: int) -> bool:
        """Make the requested room without moving a record or a value: the record arrays and
        side table are copied into larger ones, an arena only grows within its region.
        False, with nothing changed, when an arena that must grow is not in a region with
        room (it must move: ``_reclaim`` compacts it into a new one)."""
        grown = []
        for kind, val, used, want in ((K.KIND_F64, self.val, self.vtop, nval),
                                      (K.KIND_F32, self.val32, self.vtop32, nval32)):
            cap = max(len(val), _fit(len(val), used + want, _MIN_VALUES, 0))
            if cap != len(val):
                bigger = _grown(val, cap)
                if bigger is None:
                    return False
                grown.append((kind, bigger, used))
        for kind, val, used in grown:
            self._set_arena(kind, val, used)
        cap_r = max(self.rcap, _fit(self.rcap, self.top + nrec, _MIN_RECORDS, 0))
        if cap_r != self.rcap:
            self._alloc_records(cap_r)
        self._fit_meta(nmeta)
        return True

    def _fit_meta(self, nmeta: int) -> None:
        cap_m = _fit(len(self.meta), self.mtop + nmeta, _MIN_META, 0)
        if cap_m != len(self.meta):
            meta = np.zeros(cap_m, np.int64)
            meta[:self.mtop] = self.meta[:self.mtop]
            self.meta = meta

    def _reclaim(self, nrec: int = 0, nval: int = 0, nmeta: int = 0, nval32: int = 0,
                 in_place: bool = False) -> None:
        """Drop every record no live tensor can reach; grow (x2) or shrink (/2) the arrays to
        fit what is live plus the requested room.  Live tensors are re-pointed to their
        slot's new index and value range.  ``in_place`` (``settle`` only): an arena that keeps
        its size is compacted within itself and no spare arena is kept."""
        self._aoff = None  # (slots are renumbered)
        top = self.top
        keep = np.zeros(top, np.uint8)
        alive = []
        live_refs = []
        for r in self._live:
            t = r()
            if t is not None and t._tape is self:
                keep[t._slot] = 1
                alive.append(t)
                live_refs.append(r)
        cached = []  # (slot, weakref, the tensor's cache record when it points at that slot)
        for s, r in self._cached.items():
            t = r()
            if t is None:
                continue
            c = t._leaf_record
            here = c is not None and c.tape() is self and c.slot == s
            if here and c.version == t._ver:  # still the tensor's current value: worth keeping
                keep[s] = 1
            cached.append((s, r, c if here else None))
        K.mark_live(top, self.op, self.in_a, self.in_b, self.meta_at, self.flag, self.meta, keep)

        kept = keep.view(bool)
        sizes, kinds = self.n[:top][kept], self.arena_of[:top][kept]
        v64 = int(sizes[kinds == K.KIND_F64].sum())
        v32 = int(sizes.sum()) - v64
        if (nrec + nval + nmeta + nval32 and 2 * (v64 + v32) >= self.vtop + self.vtop32
                and 2 * len(sizes) >= top and self._extend(nrec, nval, nmeta, nval32)):
            self._live = live_refs  # mostly live: grown where it lies, nothing moved
            return
        needs = (int(kept.sum()) + nrec, v64 + nval, v32 + nval32)
        if in_place:  # a settle keeps the sizes the steps need: no shrinking between steps
            cap_r, cap_v, cap_v32 = self.rcap, self.vcap, self.vcap32
        else:
            self._recent = tuple(max(n, r // 2) for n, r in zip(needs, self._recent))
            cap_r = _fit(self.rcap, needs[0], _MIN_RECORDS, self._recent[0])
            cap_v = _fit(self.vcap, needs[1], _MIN_VALUES, self._recent[1])
            cap_v32 = _fit(self.vcap32, needs[2], _MIN_VALUES, self._recent[2])
        # Compact into the spare arenas when they have the right size: their pages are
        # already mapped, where fresh memory would page-fault on every first write (~5 ms per
        # 100 MB).  No view into them survives: every tensor was re-pointed by the last
        # reclaim, and np.asarray / detach hand out copies of arena values.
        same = in_place and cap_v == len(self.val)
        same32 = in_place and cap_v32 == len(self.val32)
        new_val = self.val if same else _reuse(self._spare, cap_v, np.float64)
        new_val32 = self.val32 if same32 else _reuse(self._spare32, cap_v32, np.float32)
        new_slot = np.empty(top, np.int64)
        old_val, old_val32 = self.val, self.val32
        j, vt, vt32, mt = K.compact(top, keep, self.op, self.in_a, self.in_b, self.off, self.n,
                                    self.param, self.meta_at, self.flag, self.arena_of, self.meta,
                                    old_val, new_val, old_val32, new_val32, new_slot, same,
                                    same32)
        self.top, self.mtop = int(j), int(mt)
        if cap_r != self.rcap:
            self._alloc_records(cap_r)
        self._fit_meta(nmeta)
        # (a minimum-size arena is cheap to allocate: no spare is kept for it; settling keeps
        # none: the next step records into the arena's warm front)
        self._spare = old_val if len(old_val) == cap_v > _MIN_VALUES and not in_place else None
        self._spare32 = (old_val32 if len(old_val32) == cap_v32 > _MIN_VALUES and not in_place
                         else None)
        if same:  # (a settle: the arena is where it was)
            self.vtop = int(vt)
        else:
            self._set_arena(K.KIND_F64, new_val, int(vt))
        if same32:
            self.vtop32 = int(vt32)
        else:
            self._set_arena(K.KIND_F32, new_val32, int(vt32))
        if len(self._padj) > cap_v:  # (a plan never needs more than the values' room)
            self._padj = np.empty(0, np.float64)
        if len(self._padj32) > cap_v32:
            self._padj32 = np.empty(0, np.float32)

        # re-point live tensors (array values of recorded tensors are arena views); a
        # released record still shows its value
        for t in alive:
            s = int(new_slot[t._slot])
            t._slot = s
            v = t._v
            if type(v) is np.ndarray:
                t._v = frozen(self.value_view(s, v.shape))
        self._live = live_refs
        # leaf/constant records that survive keep feeding .grad (their slot moved); a tensor
        # whose cached record was dropped records its value again when next used
        self._cached = {}
        for s, r, c in cached:
            t = r()
            ns = int(new_slot[s])
            if t is None:
                continue
            if ns >= 0:
                self._cached[ns] = r
                # (from the record read above: another thread may have pointed the tensor's
                # cache at its own tape since; that tape then records the value again)
                if c is not None and ns != s:
                    t._leaf_record = c._replace(slot=ns)
            elif c is not None:
                t._leaf_record = None


def _accumulate(tape: Tape, slot: int, g: np.ndarray, touched: np.ndarray) -> None:
    """Add ``g`` to the adjoint of ``slot`` (assign on its first touch), casting to its kind."""
    dst = tape.adjoint_view(slot)
    if touched[slot]:
        dst += g.reshape(-1)
    else:
        dst[:] = g.reshape(-1)
        touched[slot] = 1


class _Arrays(np.ndarray):
    """NumPy arrays with the elementwise methods of tensors that the reverse rules' Python
    forms call (``x.cosh()``), so that ``Tape._numpy_adjoint`` can run them on arrays."""

    def exp(self) -> np.ndarray:
        return np.exp(self)

    def expm1(self) -> np.ndarray:
        return np.expm1(self)

    def cosh(self) -> np.ndarray:
        return np.cosh(self)

    def sinh(self) -> np.ndarray:
        return np.sinh(self)


def _reuse(spare, cap: int, dtype) -> np.ndarray:
    return spare if spare is not None and len(spare) == cap else _arena(cap, dtype)


def _from_pool(n: int, dtype) -> np.ndarray | None:
    """A pooled region of ``dtype`` with room for ``n`` items that nothing refers to, taken
    out of the pool, as an arena of ``n`` items; else None."""
    with _POOL_LOCK:
        for i in range(len(_POOL) - 1, -1, -1):
            # references: the pool's and getrefcount's argument; a third is a live view
            if _POOL[i].dtype == dtype and len(_POOL[i]) >= n and sys.getrefcount(_POOL[i]) == 2:
                return _POOL.pop(i)[:n]
    return None


def _donate(arrays: tuple) -> None:
    """Put the regions of a dying tape's arenas in the pool (at most ``_POOL_MAX``, the
    oldest dropped)."""
    regions = {id(r): r for r in (_region_of(a) for a in arrays if a is not None)
               if r is not None}
    if not regions:
        return
    with _POOL_LOCK:
        _POOL.extend(regions.values())
        del _POOL[:max(0, len(_POOL) - _POOL_MAX)]


def _arena(n: int, dtype) -> np.ndarray:
    """An uninitialised array of ``n`` items for an arena: from 8 MB on (``REGION_AT``), the
    front of a region of address space reserved without committing memory (an anonymous
    ``MAP_NORESERVE`` mapping of at least 16 GB, ``_RESERVE``), which the arena can later
    grow into in place (``_region_of``).  Pages count towards the RSS only once written, as
    with any allocation.  Elsewhere (other platforms, a kernel that refuses the mapping: a
    strict overcommit policy) a plain ``np.empty``."""
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes < REGION_AT or not sys.platform.startswith("linux"):
        return np.empty(n, dtype)
    pooled = _from_pool(n, dtype) if _POOL else None
    if pooled is not None:
        return pooled
    try:
        buf = mmap.mmap(-1, max(_RESERVE, 4 * nbytes),
                        flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    except (OSError, ValueError, OverflowError):
        return np.empty(n, dtype)
    try:  # as NumPy does for its large allocations
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass
    # Each region starts at its own offset into its mapping.  Mappings of the same size land
    # a fixed distance apart (16 GB), so without it the value and adjoint arenas would start
    # at the same address modulo 2 MB, and a rule reading a value and writing an adjoint at
    # the same offset would hit the same cache sets: measured, a 10^6-element product's
    # reverse rule ran in 1.9 ms against 0.95-1.0 ms with any offset between them.
    global _regions
    _regions += 1
    return np.frombuffer(buf, dtype, offset=(_regions % 61 + 1) * _STAGGER)[:n]


def _region_of(a: np.ndarray) -> np.ndarray | None:
    """The whole region an arena made by ``_arena`` lies in (None for a plain array)."""
    whole = a.base
    if (isinstance(whole, np.ndarray) and isinstance(whole.base, memoryview)
            and isinstance(whole.base.obj, mmap.mmap)):
        return whole
    return None


def _grown(a: np.ndarray, n: int) -> np.ndarray | None:
    """Arena ``a`` grown in place to ``n`` items, when it lies in a region with room (the
    items and pages it has keep their place); else None."""
    whole = _region_of(a)
    return whole[:n] if whole is not None and len(whole) >= n else None


def _at_least(a: np.ndarray, n: int, dtype) -> np.ndarray:
    """``a``, or an arena of at least ``n`` items in its place (grown in place if it can)."""
    if len(a) >= n:
        return a
    bigger = _grown(a, n)
    return bigger if bigger is not None else _arena(n, dtype)


def _resized(adj: np.ndarray, n: int) -> np.ndarray:
    """An adjoint arena for a value arena now of ``n`` items: the same region when it grows
    within one (no fresh pages), else nothing until the next backward sizes it."""
    bigger = _grown(adj, n) if len(adj) < n else None
    # (not a slice of ``adj`` when it shrinks: that would keep its pages)
    return bigger if bigger is not None else np.empty(0, adj.dtype)


def _fit(cap: int, need: int, minimum: int, recent: int) -> int:
    """Capacity for ``need`` items: double while over half full; halve only while ``recent``
    (a decaying maximum of past needs) would use under 1/8 of it.  Without that memory, a
    loop whose graph is rebuilt each step would shrink the arena at the start of a step
    (nothing live) and regrow it in the middle, on fresh, page-faulting memory."""
    while need * 2 > cap:
        cap *= 2
    while cap > minimum and max(need, recent) * 8 < cap:
        cap //= 2
    return cap


def frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class _State(threading.local):
    """Per-thread autograd state: grad mode, the default tape and the stack of open tapes."""

    def __init__(self) -> None:
        self._grad = True
        self.default = Tape()
        self.stack: list[Tape] = []
        self.tape = self.default  # innermost open tape, else the default one
        self.rec: Tape | None = self.default  # the tape recording now; None under no_grad
        # functional differentiations running (td.grad & co.), innermost last: each one's
        # (tape, ids of its input leaves, its recorded inputs); what depends on them must
        # not leave the tape (a conversion to values would drop that dependence)
        self.differentiating: list[tuple] = []
        # the fused groups planned for the last few tapes' records (``Tape._plan``), keyed
        # by those records' bytes; per thread, as a plan's scratch is written by its sweeps
        self.plans: dict = {}

    @property
    def grad_enabled(self) -> bool:
        return self._grad

    @grad_enabled.setter
    def grad_enabled(self, mode: bool) -> None:
        if not mode and self.tape.records_for_replay:
            raise RuntimeError(
                "no_grad() inside a function recorded for replay: what it computes would not "
                "be recorded, so a replay would reuse the recorded values; compute it with "
                "tensors (detach() takes a value without its gradient), or call the function "
                "without replay=True")
        self._grad = mode
        self.rec = self.tape if mode else None

    def set_tape(self, tape: "Tape") -> None:
        self.tape = tape
        self.rec = tape if self._grad else None


thread_state = _State()


def _state() -> _State:
    return thread_state


def current_tape() -> Tape:
    """The tape that records in this thread now: the innermost ``td.tape()`` block, else the
    thread's default tape.

    >>> import tapediff as td
    >>> with td.tape() as t:
    ...     td.current_tape() is t
    True
    """
    return thread_state.tape


def tape() -> Tape:
    """A fresh tape, to be used as ``with td.tape() as t:``; operations in the block record on it.

    Tensors recorded on it can be differentiated after the block closes.  A tape belongs to
    the thread that opened it.
    """
    return Tape()
