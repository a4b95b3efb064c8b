"""The flat Wengert tape: record arrays, the value arena, reclamation, and the per-thread tape stack.

A tape is a struct of arrays: record ``i`` (opcode, input slots, arena offset, size, scalar
parameter, side-table offset, flags) produces slot ``i``.  Values live in one float64 arena,
adjoints in a second one of the same size.  Nothing on the tape is a Python object, so the
jitted kernels in ``_kernels`` can reverse (and later re-run) any record from the arrays.

Python-side bookkeeping is limited to weak references: to the tensors recorded here
(the roots of liveness) and to the tape-less tensors (leaves, constants) that have a record
here (to receive ``.grad`` and to keep their cached slot valid).  Tensors hold their tape
strongly, the tape holds nothing strongly, so a tape dies with the last tensor that uses it.

Memory: every operation first reserves room for all the records and values it will append
(``reserve``).  When room runs out the tape reclaims: it marks what live tensors can still
reach (a jitted pass), compacts records in place and values into a fresh arena, and only
then grows, by doubling, if what is live fills more than half of it.  Dead records that
sit below live ones (the previous step's ``loss`` of a script-level loop) are reclaimed too.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from . import _kernels as K

_MIN_RECORDS = 4096
_MIN_VALUES = 16384
_MIN_META = 1024


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
        "op", "ia", "ib", "off", "n", "p", "mi", "flag", "meta", "val", "adj",
        "_wop", "_wia", "_wib", "_woff", "_wn", "_wp", "_wmi", "_wval",
        "_spare", "top", "vtop", "mtop", "rcap", "vcap", "_live", "_cached", "__weakref__",
    )

    def __init__(self) -> None:
        self.top = 0  # records in use
        self.vtop = 0  # arena values in use
        self.mtop = 0  # side-table entries in use
        self._spare = None  # the previous arena, reused by the next reclaim of the same size
        self.adj = np.empty(0, np.float64)
        self._live: list = []  # weakrefs to tensors recorded here (roots for reclamation)
        self._cached: dict = {}  # slot -> weakref to the tape-less tensor it holds
        self._alloc_records(_MIN_RECORDS)
        self.meta = np.zeros(_MIN_META, np.int64)
        self._set_arena(np.empty(_MIN_VALUES, np.float64))

    # -- storage -----------------------------------------------------------------------------
    def _alloc_records(self, nrec: int) -> None:
        """(Re)allocate the record arrays with capacity ``nrec``, keeping the first ``top``.

        Records past ``top`` always hold the defaults of a scalar unary record (size 1, no
        input b, no side-table block, p = 0, no flags), so the hot recording path writes
        only the fields that differ (``push``).
        """
        top = self.top
        old = None if top == 0 else (self.op, self.ia, self.ib, self.off, self.n, self.p,
                                      self.mi, self.flag)
        self.op = np.zeros(nrec, np.int32)
        self.ia = np.zeros(nrec, np.int64)
        self.ib = np.full(nrec, -1, np.int64)
        self.off = np.zeros(nrec, np.int64)
        self.n = np.ones(nrec, np.int64)
        self.p = np.zeros(nrec, np.float64)
        self.mi = np.full(nrec, -1, np.int64)
        self.flag = np.zeros(nrec, np.uint8)
        if old is not None:
            for new, src in zip((self.op, self.ia, self.ib, self.off, self.n, self.p, self.mi,
                                 self.flag), old):
                new[:top] = src[:top]
        self.rcap = nrec
        # memoryviews: item assignment through them is ~2x cheaper than through ndarrays
        self._wop = memoryview(self.op)
        self._wia = memoryview(self.ia)
        self._wib = memoryview(self.ib)
        self._woff = memoryview(self.off)
        self._wn = memoryview(self.n)
        self._wp = memoryview(self.p)
        self._wmi = memoryview(self.mi)

    def _set_arena(self, val: np.ndarray) -> None:
        self.val = val
        self.vcap = len(val)
        self._wval = memoryview(val)
        if len(self.adj) != len(val):
            self.adj = np.empty(0, np.float64)  # sized to the arena by the next backward

    def __len__(self) -> int:
        """Number of records on the tape (released ones included until reclaimed)."""
        return self.top

    @property
    def nbytes(self) -> int:
        """Bytes held by the tape's arrays (records, side table, value and adjoint arenas)."""
        spare = 0 if self._spare is None else self._spare.nbytes
        return spare + sum(a.nbytes for a in (self.op, self.ia, self.ib, self.off, self.n, self.p,
                                              self.mi, self.flag, self.meta, self.val, self.adj))

    def __repr__(self) -> str:
        return f"<tapediff.Tape: {self.top} records, {self.nbytes} bytes>"

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> "Tape":
        st = _state()
        st.stack.append(self)
        st.tape = self
        return self

    def __exit__(self, *exc) -> None:
        st = _state()
        if not st.stack or st.stack[-1] is not self:
            raise RuntimeError("tapes must be closed in the reverse order they were opened")
        st.stack.pop()
        st.tape = st.stack[-1] if st.stack else st.default

    # -- recording ---------------------------------------------------------------------------
    def reserve(self, nrec: int, nval: int, nmeta: int = 0) -> None:
        """Make room for ``nrec`` records, ``nval`` values and ``nmeta`` side-table entries.

        Every operation reserves all it will append before appending anything, so slots
        handed out while recording one operation stay valid until its record is written.
        """
        if (self.top + nrec > self.rcap or self.vtop + nval > self.vcap
                or self.mtop + nmeta > len(self.meta)):
            self.reclaim(nrec, nval, nmeta)

    def append(self, op: int, a: int, b: int, size: int, p: float = 0.0, m: int = -1) -> int:
        """Append a record (room already reserved) and return its slot; the value is unset."""
        i = self.top
        self.top = i + 1
        self._wop[i] = op
        self._wia[i] = a
        self._wib[i] = b
        v = self.vtop
        self._woff[i] = v
        self._wn[i] = size
        self._wp[i] = p
        self._wmi[i] = m
        self.vtop = v + size
        return i

    def push(self, op: int, a: int, value: float) -> int:
        """Append a scalar record with input ``a`` and its value (room reserved); return its
        slot.  The hot path of scalar code: fields left at their defaults are not written
        (a binary or constant-parameter record sets ``ib``/``p`` itself)."""
        i = self.top
        self.top = i + 1
        v = self.vtop
        self.vtop = v + 1
        self._wop[i] = op
        self._wia[i] = a
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

    def value_view(self, slot: int, shape: tuple) -> np.ndarray:
        """The arena range of ``slot`` as an array of ``shape`` (writable; callers freeze it)."""
        o = int(self.off[slot])
        return self.val[o:o + int(self.n[slot])].reshape(shape)

    # -- differentiation -----------------------------------------------------------------------
    def sweep(self, root: int, seed: np.ndarray, retain_graph: bool):
        """Run the reverse sweep from ``root`` seeded with ``seed``; return the leaf slots reached.

        Returns None, with nothing changed, when the sweep reaches a released record.  Unless
        ``retain_graph``, every non-leaf record swept is released.
        """
        if len(self.adj) != len(self.val):
            self.adj = np.empty(len(self.val), np.float64)
        o = int(self.off[root])
        self.adj[o:o + int(self.n[root])] = seed.ravel()
        touched = np.zeros(root + 1, np.uint8)
        touched[root] = 1
        leaf_slots = np.empty(root + 1, np.int64)
        rc = K.reverse_sweep(root, not retain_graph, self.op, self.ia, self.ib, self.off, self.n,
                             self.p, self.mi, self.flag, self.meta, self.val, self.adj, touched,
                             leaf_slots)
        if rc == K.UNKNOWN_OPCODE:
            raise AssertionError("reverse sweep met an opcode it has no rule for")
        if rc < 0:
            return None
        return leaf_slots[:rc]

    # -- reclamation -------------------------------------------------------------------------
    def reclaim(self, nrec: int = 0, nval: int = 0, nmeta: int = 0) -> None:
        """Drop every record no live tensor can reach; grow (x2) or shrink (/2) the arrays.

        Called when a reservation does not fit; may be called at any time.  Live tensors are
        re-pointed to their slot's new index and value range.
        """
        top = self.top
        keep = np.zeros(top, np.uint8)
        alive = []  # (tensor, is_cached)
        live_refs = []
        for r in self._live:
            t = r()
            if t is not None and t._tape is self:
                keep[t._slot] = 1
                alive.append(t)
                live_refs.append(r)
        cached = []  # (slot, weakref, whether the tensor's cache points at that slot)
        for s, r in self._cached.items():
            t = r()
            if t is None:
                continue
            c = t._lc
            here = c is not None and c[0]() is self and c[1] == s
            if here and c[2] == t._ver:  # still the tensor's current value: worth keeping
                keep[s] = 1
            cached.append((s, r, here))
        K.mark_live(top, self.op, self.ia, self.ib, self.flag, keep)

        nkeep = int(keep.sum())
        vkeep = int(self.n[:top][keep.view(bool)].sum()) if top else 0
        cap_r, cap_v, cap_m = len(self.op), len(self.val), len(self.meta)
        cap_r = _fit(cap_r, nkeep + nrec, _MIN_RECORDS)
        cap_v = _fit(cap_v, vkeep + nval, _MIN_VALUES)
        # Compact into the spare arena when it has the right size: its pages are already
        # mapped, where a fresh allocation would page-fault on every first write (~5 ms per
        # 100 MB).  No view into it survives: every tensor was re-pointed by the last reclaim,
        # and np.asarray / detach hand out copies of arena values.
        spare = self._spare
        new_val = spare if spare is not None and len(spare) == cap_v else np.empty(cap_v)
        new_slot = np.empty(top, np.int64)
        old_val = self.val
        j, vt, mt = K.compact(top, keep, self.op, self.ia, self.ib, self.off, self.n, self.p,
                              self.mi, self.flag, self.meta, old_val, new_val, new_slot)
        self.top, self.vtop, self.mtop = int(j), int(vt), int(mt)
        if cap_r != len(self.op):
            self._alloc_records(cap_r)
        cap_m = _fit(cap_m, self.mtop + nmeta, _MIN_META)
        if cap_m != len(self.meta):
            meta = np.zeros(cap_m, np.int64)
            meta[:self.mtop] = self.meta[:self.mtop]
            self.meta = meta
        self._spare = old_val if len(old_val) == cap_v else None
        self._set_arena(new_val)

        # re-point live tensors (float64 arrays of recorded tensors are arena views; other
        # dtypes keep their own copy); a released record still shows its value
        for t in alive:
            s = int(new_slot[t._slot])
            t._slot = s
            v = t._v
            if type(v) is np.ndarray and v.dtype == np.float64:
                t._v = _frozen(self.value_view(s, v.shape))
        self._live = live_refs
        # leaf/constant records that survive keep feeding .grad (their slot moved); a tensor
        # whose cached record was dropped records its value again when next used
        self._cached = {}
        me = weakref.ref(self)
        for s, r, here in cached:
            t = r()
            ns = int(new_slot[s])
            if t is None:
                continue
            if ns >= 0:
                self._cached[ns] = r
                if here:
                    c = t._lc
                    t._lc = (me, ns, c[2], c[3])
            elif here:
                t._lc = None


def _fit(cap: int, need: int, minimum: int) -> int:
    """Capacity for ``need`` items: double while over half full, halve while under 1/8."""
    while need * 2 > cap:
        cap *= 2
    while cap > minimum and need * 8 < cap:
        cap //= 2
    return cap


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class _State(threading.local):
    """Per-thread autograd state: grad mode, the default tape and the stack of open tapes."""

    def __init__(self) -> None:
        self.grad_enabled = True
        self.default = Tape()
        self.stack: list[Tape] = []
        self.tape = self.default  # innermost open tape, else the default one


_tls = _State()


def _state() -> _State:
    return _tls


def current_tape() -> Tape:
    """The tape that records in this thread now: the innermost ``td.tape()`` block, else the
    thread's default tape.

    >>> import tapediff as td
    >>> with td.tape() as t:
    ...     td.current_tape() is t
    True
    """
    return _tls.tape


def tape() -> Tape:
    """A fresh tape, to be used as ``with td.tape() as t:``; operations in the block record on it.

    Tensors recorded on it can be differentiated after the block closes.  A tape belongs to
    the thread that opened it.
    """
    return Tape()
