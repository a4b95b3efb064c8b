"""Fusion groups for replay: chains of elementwise records run block by block in registers.

Replayed one record at a time, a chain such as ``100 * (b - a * a) ** 2 + (1 - a) ** 2`` over
10^6 elements writes and reads back an 8 MB array per operation, in both sweeps.  A recording
kept for replay knows all its records, so ``plan`` groups them once, after recording:

* A **group** is a set of elementwise records (rules of one or two tensors, no broadcast
  layout, at least ``FUSE_MIN`` elements, one arena kind) of one size, taken in tape order.
  A record that is not elementwise does not end the open group unless it reads one of its
  members: it runs before the group (nothing in the group feeds it), so ``x[1:]`` recorded
  in the middle of a chain does not split it.  A record of another size ends it; so does a
  sum of a member over its trailing axes (all of it, or ``(Qx * Qx).sum(axis=-1)``), which
  joins the group as its last micro-op: segments of R consecutive elements summed block by
  block, a segment straddling two blocks in two pieces.
* A slice of consecutive elements (``x[1:]``, a reshape) read only by one group is not run:
  the group reads its input in place, and adds its adjoint contributions straight into the
  input's adjoint.
* Each member becomes a **micro-op** (``_kernels.fused_group``): its rule over a block of
  ``BLOCK`` elements, reading operands from the arena (a range, or one element of a size-1
  operand) or from **registers**, blocks of scratch past the arena's last value.  A member
  read outside its group (by a later record, a guard, or as the output) is stored to its
  arena range; the others live only in registers, so the arena ranges of inner values are
  neither written nor read.
* The reverse pass recomputes the registers of each block, then runs the members' reverse
  rules in reverse order, adjoints at the values' offsets: an inner adjoint is a register,
  assigned by its first contribution; an adjoint in the arena is assigned or added as the
  record-by-record sweep would, or, when only contributions through a slice or of a size-1
  operand reach it, zeroed block by block just ahead of them and summed.  Only the members
  the recording's first sweep reached get a reverse micro-op, so a member no adjoint
  reaches contributes nothing (not even 0 * inf).

The micro-ops evaluate the primitives' own ``fwd_``/``adj_`` rules, per element in the same
order as the record-by-record sweeps, so values and adjoints are those of an unfused replay
up to the association of sums: a sum's value and a size-1 operand's adjoint are summed
block by block (a segment of a sum over trailing axes piece by piece, eight running sums
each), and an adjoint reached through overlapping slices adds its contributions
in another order (Rosenbrock at 10^6: 1.5e-16 of the gradient's largest element, 1.5e-14 of
the value).  No code is generated per
recording: the plan is data, read by kernels compiled once.

``Tensor.backward`` plans the records of a tape of a few large array records the same way
(``Tape._plan``: the records up to the output, those its sweep reaches) and sweeps its groups
in reverse; every value is already in the arena there, and transcendental records are left
out of the groups, so the registers recompute what NumPy computed (bit for bit, but for a
power NumPy takes by another route, ``x ** 0.5`` by ``sqrt``: within an ulp).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _kernels as K
from . import _primitives as P

#: Smallest record fused: below it a block's dispatch costs more than a pass over memory.
FUSE_MIN = 256
#: Elements per block: registers of a few groups' inner values stay in L1/L2.
BLOCK = 512
#: Smallest group kept, in element operations (size x members): a recording with groups
#: replays along its schedule with a few calls from Python (~20-40 us more than the single
#: compiled call of a recording without), which a smaller group does not win back
#: (Rosenbrock at 10^3: 24 us fused, 18 us in one call).
FUSE_WORK = 1 << 16

_ELEMENTWISE = K.ELEMENTWISE | K.WRITES_ONCE
_NOT_FUSED = K.NO_GRADIENT | K.PYTHON_RULE | K.LATE_RULE | K.META_INPUTS


class Plan(NamedTuple):
    """A recording's schedule and micro-ops, followed by ``Tape.forward`` and ``Tape.sweep``
    (``fused=``), whose groups ``_kernels.fused_group`` runs."""

    sched: np.ndarray  # (rows, 3): (lo, hi, -1) records lo .. hi - 1, or (0, 0, g) group g
    groups: np.ndarray  # (groups, 7): see _kernels.G_*
    fu: np.ndarray  # forward micro-ops (see _kernels.U_*)
    fc: np.ndarray  # their parameters
    ru: np.ndarray  # reverse micro-ops, in the order they run
    rc: np.ndarray
    fresh: np.ndarray  # scratch of the reverse pass
    tmp: np.ndarray  # (2, BLOCK) float64 scratch of the reverse pass
    registers: tuple  # elements of scratch needed past the last value of each arena kind
    fused: int  # records in groups
    group_of: np.ndarray  # each record's group, or -1
    untouched: np.ndarray  # records whose adjoint range the sweep never touches (registers,
    # slices read in place)
    reach: np.ndarray | None = None  # an eager backward's: the records its sweep reaches


def unfused(top: int) -> Plan:
    """The schedule of a recording without groups: every record in order."""
    empty = np.zeros((0, K.U_COLUMNS), np.int64)
    return Plan(np.array([[0, top, -1]], np.int64), np.zeros((0, 7), np.int64), empty,
                np.zeros(0), empty, np.zeros(0), np.zeros((0, 2), np.uint8), np.zeros((2, 1)),
                (0, 0), 0, np.full(top, -1, np.int64), np.zeros(top, bool))


def _contiguous(meta: np.ndarray, m: int) -> tuple | None:
    """(start, elements iterated, R) of the restride payload at ``meta[m]`` when it reads
    consecutive input elements (a slice, a reshape, or a sum of a whole range); else None."""
    d, start, r = (int(v) for v in meta[m + 1:m + 4])
    shape, strides = meta[m + 4:m + 4 + d], meta[m + 4 + d:m + 4 + 2 * d]
    step = 1
    for size, stride in zip(shape[::-1].tolist(), strides[::-1].tolist()):
        if size != 1 and stride != step:
            return None
        step *= size
    return start, step, r


def plan(tape, root: int, swept: np.ndarray, numpy_from: int, top: int | None = None) -> Plan:
    """Group the first ``top`` (all) records of ``tape`` whose output is slot ``root``;
    ``swept`` marks the records a reverse sweep from ``root`` reaches.  Registers start at
    the first free value of their group's arena, which the caller makes room for
    (``Plan.registers``).  Records of ``numpy_from`` elements or more whose rules the sweeps
    hand to NumPy (its SIMD transcendental loops, 2-4x faster than a libm call per element)
    are not fused."""
    top = tape.top if top is None else top
    op, n, kind = tape.op[:top], tape.n[:top], tape.arena_of[:top]
    tr = K.TRAITS[op]
    a_, b_ = tape.in_a[:top], tape.in_b[:top]
    fusable = (((tr & _ELEMENTWISE) == _ELEMENTWISE) & ((tr & _NOT_FUSED) == 0)
               & (tape.meta_at[:top] < 0) & (n >= FUSE_MIN) & (a_ >= 0)
               & (kind[a_] == kind) & ((b_ < 0) | (kind[np.maximum(b_, 0)] == kind))
               & ~(((P.TO_NUMPY[op] != 0) | ((tr & K.NUMPY_ADJOINT) != 0)) & (n >= numpy_from)))
    if np.count_nonzero(fusable) < 2:
        return unfused(top)
    listed = (tr & K.META_INPUTS) != 0
    in_a, in_b = a_.tolist(), b_.tolist()
    off = tape.off

    def inputs(i: int) -> list:
        return tape.inputs(i) if listed[i] else [s for s in (in_a[i], in_b[i]) if s >= 0]

    # restrides that read consecutive elements: slices to read in place, and sums over
    # trailing axes (of all of their input, or of segments of R consecutive elements)
    slices = {}  # slot -> (its input, first element read)
    sums = {}  # slot -> R
    for i in np.flatnonzero(op == K.OP_RESTRIDE).tolist():
        c = _contiguous(tape.meta, int(tape.meta_at[i]))
        if c is None:
            continue
        start, total, r = c
        if r == 1 and total == n[i] and total >= FUSE_MIN and kind[in_a[i]] == kind[i]:
            slices[i] = (in_a[i], start)
        elif (r > 1 and start == 0 and total == n[in_a[i]] and n[i] * r == total
              and kind[in_a[i]] == kind[i]):
            sums[i] = r

    # -- groups, in the order they and the other records run ----------------------------
    group_of = np.full(top, -1, np.int64)
    groups: list[list[int]] = []
    order: list = []  # record i, or ("g", group)
    cur: list[int] = []
    in_cur: set = set()

    def close() -> None:
        if len(cur) >= 2 and len(cur) * int(n[cur[0]]) >= FUSE_WORK:
            group_of[cur] = len(groups)
            order.append(("g", len(groups)))
            groups.append(list(cur))
        else:  # too little to fuse: one by one where the group would run (after the records
            order.extend(cur)  # run ahead of it, none of which reads its members)
        cur.clear()
        in_cur.clear()

    for i in range(top):
        if fusable[i]:
            if cur and (n[i] != n[cur[0]] or kind[i] != kind[cur[0]]):
                close()
            cur.append(i)
            in_cur.add(i)
            continue
        if cur and i in sums and in_a[i] in in_cur:  # a sum closes its group
            cur.append(i)
            close()
            continue
        if cur and any(s in in_cur for s in inputs(i)):
            close()
        order.append(i)
    close()
    if not groups:
        return unfused(top)

    # -- who reads what: members read outside their group keep their arena range; slices
    # read only inside one group are read there in place, and not run ----------------------
    member = group_of >= 0
    readers: dict = {}
    for i in range(top):
        for s in inputs(i):
            if member[s] or s in slices:
                readers.setdefault(s, set()).add(int(group_of[i]))
    in_place = {v: (src, start) for v, (src, start) in slices.items()
                if len(readers.get(v, ())) == 1 and min(readers[v]) >= 0
                and n[v] == n[groups[min(readers[v])][0]]}
    stored = np.zeros(top, bool)
    if root >= 0:
        stored[root] = True
    for s, gs in readers.items():
        if member[s] and gs != {int(group_of[s])}:
            stored[s] = True
    for v, (src, _) in in_place.items():  # (its input is read in its place)
        if member[src]:
            stored[src] = True
    for members in groups:
        if members[-1] in sums:  # (a sum's one value is never a register)
            stored[members[-1]] = True

    # -- micro-ops ------------------------------------------------------------------------
    bases = {K.KIND_F64: tape.vtop, K.KIND_F32: tape.vtop32}
    flag, param = tape.flag, tape.param
    # (x * x runs as x ** 2: the same value, and one contribution 2 g x to x's adjoint in one
    # loop where the product's rule gives two, through scratch: 1.0 -> 0.3 ns an element)
    code, c = {}, {}
    for m in np.flatnonzero(member).tolist():
        square = op[m] == K.OP_MUL and in_a[m] == in_b[m]
        code[m] = K.OP_POW_C if square else int(op[m])
        c[m] = 2.0 if square else float(param[m])
    fu, fc, ru, rc, rows = [], [], [], [], []
    registers = {K.KIND_F64: 0, K.KIND_F32: 0}
    for g, members in enumerate(groups):
        nn = int(n[members[0]])
        gk = int(kind[members[0]])
        block = min(BLOCK, nn)
        reg = {}  # member -> its register's offset
        for m in members:
            if not stored[m]:
                reg[m] = bases[gk] + len(reg) * block
        registers[gk] = max(registers[gk], len(reg) * block)

        def target(s: int) -> int:
            """The slot whose adjoint operand s's contributions go to."""
            return in_place[s][0] if s in in_place else s

        # slots whose adjoint only accumulates here: read through a slice, or of size 1
        # (then every contribution to them adds, after one zeroing)
        adds = {target(s) for m in members for s in (in_a[m], in_b[m])
                if s >= 0 and (s in in_place or int(n[s]) != nn)}
        ahead = {}  # such a slot -> the largest start of a slice of it read here
        for s in {s for m in members for s in (in_a[m], in_b[m]) if s in in_place}:
            src, start = in_place[s]
            ahead[src] = max(ahead.get(src, 0), start)

        def at_(s: int) -> tuple:
            """(base, step, mask, slot getting the adjoint, accumulates only) of slot s read
            as an operand or written as an output."""
            if s in reg:
                return reg[s], 0, -1, -1, 0
            if s in in_place:
                src, start = in_place[s]
                return int(off[src]) + start, 1, -1, src, 1
            o = int(off[s])
            return (o, 1, -1, s, int(s in adds)) if int(n[s]) == nn else (o, 0, 0, s, 1)

        f0 = len(fu)
        where = {}
        for m in members:
            a, b = in_a[m], in_b[m]
            oo, so, *_ = at_(m)
            where[m] = at_(a), (at_(b) if b >= 0 else at_(a))
            (oa, sa, ma, *_), (ob, sb, mb, *_) = where[m]
            fu.append([code[m], oo, so, oa, sa, ob, sb, ma, mb, int(m in reg)]
                      + [0] * (K.U_SEG - 10) + [sums.get(m, 0)])
            fc.append(c[m])
        r0 = len(ru)
        seen = set()  # slots that already have a contribution
        for m in reversed(members):
            if not swept[m]:
                continue
            a, b = in_a[m], (in_b[m] if code[m] == op[m] else -1)
            (oa, sa, ma, sla, za), (ob, sb, mb, slb, zb) = where[m]
            sla, slb = (sla, slb) if b >= 0 else (sla, -1)
            ga = a >= 0 and op[a] != K.OP_CONST and not flag[a] & K.FLAG_CONSTANT
            gb = b >= 0 and op[b] != K.OP_CONST and not flag[b] & K.FLAG_CONSTANT
            if not ga and not gb:
                continue
            first = []
            for s, gets, acc in ((a, ga, za), (b, gb, zb)):
                first.append(int(gets and not acc and target(s) not in seen))
                if gets:
                    seen.add(target(s))
            oo, so, *_ = at_(m)
            zero = [1 + ahead.get(sl, 0) if z else 0 for sl, z in ((sla, za), (slb, zb))]
            ru.append([code[m], oo, so, oa, sa, ob, sb, ma, mb, int(ga), int(gb), *first,
                       sla, slb, *zero, sums.get(m, 0)])
            rc.append(c[m])
        rows.append([nn, block, f0, len(fu), r0, len(ru), gk])

    sched = []
    for item in order:
        if item in in_place:
            continue
        if isinstance(item, tuple):
            sched.append([0, 0, item[1]])
        elif sched and sched[-1][2] < 0 and sched[-1][1] == item:
            sched[-1][1] = item + 1
        else:
            sched.append([item, item + 1, -1])
    untouched = member & ~stored  # (registers)
    untouched[list(in_place)] = True
    return Plan(np.array(sched, np.int64), np.array(rows, np.int64),
                np.array(fu, np.int64).reshape(-1, K.U_COLUMNS), np.array(fc, np.float64),
                np.array(ru, np.int64).reshape(-1, K.U_COLUMNS), np.array(rc, np.float64),
                np.zeros((len(ru), 2), np.uint8), np.zeros((2, BLOCK)),
                (registers[K.KIND_F64], registers[K.KIND_F32]), int(member.sum()), group_of,
                untouched)
