"""Opcodes, their reverse rules, and the jitted sweeps over the tape's record arrays.

Everything Numba compiles lives in this one file.  Numba's on-disk cache is keyed by the source
file of each function, so opcode constants and kernels defined in another module could go
stale in the cache without Numba noticing; keeping them together makes every edit here
invalidate the cache as a whole.

Layout of a tape (see ``_tape.Tape``): record ``i`` produces slot ``i``; its value is
``val[off[i]:off[i] + n[i]]`` (flat, C order), its adjoint the same range of ``adj``.
``ia[i]``/``ib[i]`` are input slots (-1 when absent), ``p[i]`` a scalar parameter and
``mi[i]`` the offset of a block in the int64 side table ``meta`` (``meta[m]`` holds the
block's length, the payload follows).

Dispatch is a hand-written ``if/elif`` chain over opcodes in ``reverse_sweep``.  Numba cannot
cache functions built with ``exec`` nor functions that receive other jitted functions as
arguments, so a registry-driven dispatch would either lose the cache or need generated
code; a plain chain is cached, readable, and ``tests/test_kernels.py`` checks that every
opcode in ``OPCODES`` has a branch (an opcode without one makes the sweep return
``UNKNOWN_OPCODE``).

Kernels use ``error_model="numpy"``: division by zero and the like give inf/nan as in NumPy
(Numba's default raises ZeroDivisionError) and loops need no per-element checks.

Elementwise binary records accept an operand of size 1 against an output of size n (a
scalar operand): the kernels index it with ``k & mask`` where mask is 0 for such an
operand and -1 otherwise, which keeps one loop per rule and still vectorises for the
equal-size case.  Every other broadcast goes through ``OP_RESTRIDE``, whose adjoint is the
single place where broadcast adjoints are summed back to the input's shape.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# ---------------------------------------------------------------------------------------------
# Opcodes.  Names say the operand kinds: plain = tensor(s) only, _C = tensor with the scalar
# constant p.  Each rule's derivative sits beside its opcode in ``reverse_sweep`` below.
# ---------------------------------------------------------------------------------------------
OP_LEAF = 0  # value of a leaf that requires grad; its adjoint goes to the leaf's .grad
OP_CONST = 1  # a constant operand (copied in); never gets an adjoint
OP_ADD = 2  # a + b
OP_SUB = 3  # a - b
OP_MUL = 4  # a * b
OP_DIV = 5  # a / b
OP_POW = 6  # a ** b
OP_ADD_C = 7  # a + p   (a - c is recorded as a + (-c): exact in IEEE arithmetic)
OP_MUL_C = 8  # a * p   (-a is a * -1)
OP_RSUB_C = 9  # p - a
OP_DIV_C = 10  # a / p
OP_RDIV_C = 11  # p / a
OP_POW_C = 12  # a ** p
OP_RPOW_C = 13  # p ** a
OP_EXP = 14
OP_LOG = 15
OP_SQRT = 16
OP_SIN = 17
OP_COS = 18
OP_TAN = 19
OP_TANH = 20
OP_SIGMOID = 21
OP_RELU = 22
OP_ABS = 23
OP_RESTRIDE = 24  # strided gather / sum: slicing, broadcasting, transposes, axis sums

# Name of each opcode as shown in reprs (grad_fn=<MulBackward0>).
OPCODES = {
    OP_LEAF: "Leaf", OP_CONST: "Const", OP_ADD: "Add", OP_SUB: "Sub", OP_MUL: "Mul",
    OP_DIV: "Div", OP_POW: "Pow", OP_ADD_C: "Add", OP_MUL_C: "Mul", OP_RSUB_C: "Rsub",
    OP_DIV_C: "Div", OP_RDIV_C: "Div", OP_POW_C: "Pow", OP_RPOW_C: "Pow", OP_EXP: "Exp",
    OP_LOG: "Log", OP_SQRT: "Sqrt", OP_SIN: "Sin", OP_COS: "Cos", OP_TAN: "Tan",
    OP_TANH: "Tanh", OP_SIGMOID: "Sigmoid", OP_RELU: "Relu", OP_ABS: "Abs",
    OP_RESTRIDE: "Restride",
}

# Record flag bits.
FLAG_RELEASED = 1  # swept by a backward without retain_graph: may not be swept again

# Return codes of reverse_sweep below zero.
UNKNOWN_OPCODE = -1
# ``-2 - i`` means: record i was reached but has been released.


@njit(cache=True, nogil=True, error_model="numpy")
def partials(o, g, x, z, y, c):
    """The reverse rule of every elementwise opcode: (g * d out/d a, g * d out/d b).

    g: adjoint of the output; x, z: values of inputs a, b (z unused by unary ops);
    y: value of the output; c: the record's scalar parameter.
    """
    if o == OP_ADD:
        return g, g
    if o == OP_SUB:
        return g, -g
    if o == OP_MUL:
        return g * z, g * x
    if o == OP_DIV:  # d/da = 1/b, d/db = -(a/b)/b
        return g / z, -g * y / z
    if o == OP_POW:  # d/da = b a^(b-1) (0 where b == 0); d/db = a^b log a (0 where a == 0, b >= 0)
        da = 0.0 if z == 0.0 else g * z * x ** (z - 1.0)
        db = 0.0 if (x == 0.0 and z >= 0.0) else g * y * math.log(x)
        return da, db
    if o == OP_ADD_C:
        return g, 0.0
    if o == OP_MUL_C:
        return g * c, 0.0
    if o == OP_RSUB_C:
        return -g, 0.0
    if o == OP_DIV_C:
        return g / c, 0.0
    if o == OP_RDIV_C:  # d(c/a)/da = -(c/a)/a
        return -g * y / x, 0.0
    if o == OP_POW_C:  # c x^(c-1); squares are common enough to skip pow()
        if c == 2.0:
            return 2.0 * g * x, 0.0
        return (0.0 if c == 0.0 else g * c * x ** (c - 1.0)), 0.0
    if o == OP_RPOW_C:
        return g * y * math.log(c), 0.0
    if o == OP_EXP:
        return g * y, 0.0
    if o == OP_LOG:
        return g / x, 0.0
    if o == OP_SQRT:
        return g * 0.5 / y, 0.0
    if o == OP_SIN:
        return g * math.cos(x), 0.0
    if o == OP_COS:
        return -g * math.sin(x), 0.0
    if o == OP_TAN:  # 1 + tan^2
        return g * (1.0 + y * y), 0.0
    if o == OP_TANH:  # 1 - tanh^2
        return g * (1.0 - y * y), 0.0
    if o == OP_SIGMOID:  # s (1 - s)
        return g * y * (1.0 - y), 0.0
    if o == OP_RELU:  # 0 at 0, as PyTorch
        return (g if x > 0.0 else 0.0), 0.0
    if o == OP_ABS:  # sign(x), 0 at 0
        return (g if x > 0.0 else (-g if x < 0.0 else 0.0)), 0.0
    return math.nan, math.nan


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _vector_rule(o, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c):
    """``partials`` over a record of nn > 1 elements (``o`` is a constant at each call site,
    so the rule's branches fold away and the loop vectorises).  A size-1 operand is read
    with mask 0; its adjoint accumulates all nn contributions.  ``fa``/``fb``: first touch
    of a full-size input, whose adjoint is then assigned rather than added."""
    g = adj[oo:oo + nn]
    y = val[oo:oo + nn]
    x = val[oa:]
    z = val[ob:]
    da = adj[oa:]
    db = adj[ob:]
    for k in range(nn):
        pa, pb = partials(o, g[k], x[k & ma], z[k & mb], y[k], c)
        if fa:
            da[k] = pa
        elif ga:
            da[k & ma] += pa
        if fb:
            db[k] = pb
        elif gb:
            db[k & mb] += pb


@njit(cache=True, nogil=True, error_model="numpy")
def _vector_rule_any(o, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c):
    """``_vector_rule`` for an opcode known only at run time (one branch per element)."""
    _vector_rule(o, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)


@njit(cache=True, nogil=True, error_model="numpy")
def restride_iter_adjoint(meta, m, adj, oo, oa):
    """adj_in[pos(k)] += adj_out[k // R] over the record's strided iteration space.

    Payload at meta[m+1:]: ndim, start, R, shape[ndim], strides[ndim] (in elements of the
    input's flat layout).  The iteration runs over ``shape`` in C order; element k reads the
    input at ``start + sum(idx_d * strides_d)`` and belongs to output element ``k // R``
    (R > 1 when trailing dimensions are summed).
    """
    d = meta[m + 1]
    start = meta[m + 2]
    r = meta[m + 3]
    shp = meta[m + 4:m + 4 + d]
    st = meta[m + 4 + d:m + 4 + 2 * d]
    inner = shp[d - 1]
    s = st[d - 1]
    total = 1
    for j in range(d):
        total *= shp[j]
    if total == 0:
        return
    g = adj[oo:]
    a = adj[oa:]
    idx = np.zeros(d, np.int64)
    base = start
    k = 0
    for _ in range(total // inner):
        if r == 1:
            if s == 1:
                for t in range(inner):
                    a[base + t] += g[k + t]
            else:
                for t in range(inner):
                    a[base + t * s] += g[k + t]
        else:
            # summed axes are the trailing ones, so r is a multiple of inner: one output
            # element per inner run
            gk = g[k // r]
            if s == 1:
                for t in range(inner):
                    a[base + t] += gk
            else:
                for t in range(inner):
                    a[base + t * s] += gk
        k += inner
        # advance the multi-index over the outer dimensions
        j = d - 2
        while j >= 0:
            idx[j] += 1
            base += st[j]
            if idx[j] < shp[j]:
                break
            base -= st[j] * shp[j]
            idx[j] = 0
            j -= 1


@njit(cache=True, nogil=True, error_model="numpy")
def reverse_sweep(root, release, op, ia, ib, off, n, p, mi, flag, meta, val, adj, touched,
                  leaf_slots):
    """Accumulate adjoints from ``root`` (whose adjoint the caller seeded) down to slot 0.

    ``touched[i]`` is 1 once slot i holds an adjoint; the caller zeroes ``touched`` and sets
    it for the root.  An input's adjoint is assigned, not added, on its first touch (scalar
    records) or zeroed just before it (array records), so the arena is never cleared as a
    whole.  Returns the number of leaf slots reached (written to ``leaf_slots``),
    ``UNKNOWN_OPCODE``, or ``-2 - i`` when released record i is reached; in both error cases
    no flag has been changed.
    """
    nleaf = 0
    for i in range(root, -1, -1):
        if touched[i] == 0:
            continue
        if flag[i] & FLAG_RELEASED:
            return -2 - i
        o = op[i]
        if o == OP_LEAF:
            leaf_slots[nleaf] = i
            nleaf += 1
            continue
        if o > OP_RESTRIDE or o < 0:
            return UNKNOWN_OPCODE
        a = ia[i]
        b = ib[i]
        ga = op[a] != OP_CONST  # every record has an input a
        gb = b >= 0 and op[b] != OP_CONST
        oo = off[i]
        oa = off[a]
        ob = off[b] if b >= 0 else oa
        nn = n[i]
        c = p[i]
        if nn == 1 and o != OP_RESTRIDE:
            # scalar record: one rule evaluation, first touch assigns
            pa, pb = partials(o, adj[oo], val[oa], val[ob], val[oo], c)
            if ga:
                if touched[a]:
                    adj[oa] += pa
                else:
                    adj[oa] = pa
                    touched[a] = 1
            if gb:
                if touched[b]:
                    adj[ob] += pb
                else:
                    adj[ob] = pb
                    touched[b] = 1
            continue
        # An input's first touch zeroes its adjoint, except a full-size input of an
        # elementwise rule, which assigns instead (one pass over memory fewer).  When b is a,
        # a's first touch has already happened, so b adds.
        fa = ga and touched[a] == 0 and n[a] == nn and o != OP_RESTRIDE
        if ga and touched[a] == 0:
            if not fa:
                adj[oa:oa + n[a]] = 0.0
            touched[a] = 1
        fb = gb and touched[b] == 0 and n[b] == nn
        if gb and touched[b] == 0:
            if not fb:
                adj[ob:ob + n[b]] = 0.0
            touched[b] = 1
        ma = -1 if n[a] == nn else 0
        mb = -1 if b >= 0 and n[b] == nn else 0
        # Common rules get loops specialised on a constant opcode (the cheap ones are
        # memory-bound and vectorise; a per-element branch and call would cost 1-10 ns per
        # element); the rare ones share one loop, which keeps compile time down (each
        # specialised loop adds ~0.3 s to a cold compile).
        if o == OP_RESTRIDE:
            restride_iter_adjoint(meta, mi[i], adj, oo, oa)
        elif o == OP_ADD:
            _vector_rule(OP_ADD, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_SUB:
            _vector_rule(OP_SUB, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_MUL:
            _vector_rule(OP_MUL, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_DIV:
            _vector_rule(OP_DIV, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif OP_ADD_C <= o <= OP_DIV_C:  # ADD_C, MUL_C, RSUB_C, DIV_C: d/da is a constant k
            k = 1.0 if o == OP_ADD_C else (c if o == OP_MUL_C else (-1.0 if o == OP_RSUB_C
                                                                      else 1.0 / c))
            _vector_rule(OP_MUL_C, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, k)
        elif o == OP_POW_C:
            _vector_rule(OP_POW_C, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_EXP:
            _vector_rule(OP_EXP, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_LOG:
            _vector_rule(OP_LOG, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_SQRT:
            _vector_rule(OP_SQRT, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_SIN:
            _vector_rule(OP_SIN, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_COS:
            _vector_rule(OP_COS, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_TANH:
            _vector_rule(OP_TANH, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_SIGMOID:
            _vector_rule(OP_SIGMOID, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_RELU:
            _vector_rule(OP_RELU, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        else:
            _vector_rule_any(o, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
    if release:
        for i in range(root + 1):
            if touched[i] and op[i] != OP_LEAF:
                flag[i] |= FLAG_RELEASED
    return nleaf


@njit(cache=True, nogil=True, error_model="numpy")
def mark_live(top, op, ia, ib, flag, keep):
    """Extend ``keep`` (roots set by the caller) to every record a kept, unreleased record reads.

    Released records keep their own value (a live tensor may still show it) but no longer
    hold their inputs alive: they can never be swept again.
    """
    for i in range(top - 1, -1, -1):
        if keep[i] and not flag[i] & FLAG_RELEASED:
            if ia[i] >= 0:
                keep[ia[i]] = 1
            if ib[i] >= 0:
                keep[ib[i]] = 1


@njit(cache=True, nogil=True, error_model="numpy")
def compact(top, keep, op, ia, ib, off, n, p, mi, flag, meta, val, new_val, new_slot):
    """Move kept records down in place, their values into ``new_val``, their meta blocks down.

    Writes each old slot's new index (-1 if dropped) to ``new_slot`` and returns
    ``(records, values, meta)`` now in use.  Inputs always precede their record, so their
    new index is known when the record moves.
    """
    j = 0
    vt = 0
    mt = 0
    for i in range(top):
        if not keep[i]:
            new_slot[i] = -1
            continue
        new_slot[i] = j
        nn = n[i]
        new_val[vt:vt + nn] = val[off[i]:off[i] + nn]
        op[j] = op[i]
        ia[j] = new_slot[ia[i]] if ia[i] >= 0 else -1
        ib[j] = new_slot[ib[i]] if ib[i] >= 0 else -1
        off[j] = vt
        n[j] = nn
        p[j] = p[i]
        flag[j] = flag[i]
        m = mi[i]
        if m >= 0:
            ln = meta[m] + 1
            for t in range(ln):
                meta[mt + t] = meta[m + t]
            mi[j] = mt
            mt += ln
        else:
            mi[j] = -1
        vt += nn
        j += 1
    # the freed tail takes the defaults the recording path relies on (see Tape.push)
    ib[j:top] = -1
    n[j:top] = 1
    p[j:top] = 0.0
    mi[j:top] = -1
    flag[j:top] = 0
    return j, vt, mt
