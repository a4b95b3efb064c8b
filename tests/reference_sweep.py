"""A deliberately simple reverse sweep over a tape's records, in plain Python and NumPy.

It shares nothing with tapediff/_src/_kernels.py but the record format: each rule below is
written again from the mathematics, slot by slot, with whole-array NumPy expressions, so a
mistake in a jitted kernel (an index, a first-touch shortcut, a specialised loop) shows up as
a disagreement with it.  Slow on purpose; for tests only.
"""
from __future__ import annotations

import numpy as np

from tapediff._src import _kernels as K


def _value(tape, s):
    return tape.value_view(s, (int(tape.n[s]),)).astype(np.float64)


def _payload(tape, i):
    m = int(tape.meta_at[i])
    return tape.meta[m + 1:m + 1 + int(tape.meta[m])]


def _positions(p):
    """Input position of each element of a restride layout (ndim, start, R, shape, strides)."""
    d, start = int(p[0]), int(p[1])
    shape, strides = p[3:3 + d], p[3 + d:3 + 2 * d]
    idx = np.indices(shape).reshape(d, -1)
    return start + (idx * strides[:, None]).sum(0)


#: opcode -> (g, x, z, y, c) -> (d/da, d/db) of an elementwise record, as arrays (broadcast
#: against g): g the output's adjoint, x and z the inputs' values, y the output's, c the
#: record's parameter.  One line per elementwise opcode (``K.TRAITS[op] & K.ELEMENTWISE``).
ELEMENTWISE_RULES = {
    K.OP_ADD: lambda g, x, z, y, c: (g, g), K.OP_SUB: lambda g, x, z, y, c: (g, -g),
    K.OP_MUL: lambda g, x, z, y, c: (g * z, g * x),
    K.OP_DIV: lambda g, x, z, y, c: (g / z, -g * x / z ** 2),
    K.OP_POW: lambda g, x, z, y, c: (np.where(z == 0, 0.0, g * z * x ** (z - 1)),
                                     np.where((x == 0) & (z >= 0), 0.0, g * y * np.log(x))),
    K.OP_ARCTAN2: lambda g, x, z, y, c: (g * z / (x * x + z * z), -g * x / (x * x + z * z)),
    K.OP_HYPOT: lambda g, x, z, y, c: (g * x / y, g * z / y),
    K.OP_ADD_C: lambda g, x, z, y, c: (g, 0), K.OP_MUL_C: lambda g, x, z, y, c: (g * c, 0),
    K.OP_RSUB_C: lambda g, x, z, y, c: (-g, 0), K.OP_DIV_C: lambda g, x, z, y, c: (g / c, 0),
    K.OP_RDIV_C: lambda g, x, z, y, c: (-g * c / x ** 2, 0),
    K.OP_POW_C: lambda g, x, z, y, c: (g * c * x ** (c - 1) if c != 0 else 0 * g, 0),
    K.OP_RPOW_C: lambda g, x, z, y, c: (g * np.log(c) * c ** x, 0),
    K.OP_EXP: lambda g, x, z, y, c: (g * np.exp(x), 0),
    K.OP_LOG: lambda g, x, z, y, c: (g / x, 0),
    K.OP_SQRT: lambda g, x, z, y, c: (g / (2 * np.sqrt(x)), 0),
    K.OP_SIN: lambda g, x, z, y, c: (g * np.cos(x), 0),
    K.OP_COS: lambda g, x, z, y, c: (-g * np.sin(x), 0),
    K.OP_TAN: lambda g, x, z, y, c: (g / np.cos(x) ** 2, 0),
    K.OP_TANH: lambda g, x, z, y, c: (g / np.cosh(x) ** 2, 0),
    K.OP_SIGMOID: lambda g, x, z, y, c: (g * np.exp(-x) / (1 + np.exp(-x)) ** 2, 0),
    K.OP_RELU: lambda g, x, z, y, c: (g * (x > 0), 0),
    K.OP_ABS: lambda g, x, z, y, c: (g * np.sign(x), 0),
    K.OP_LOG1P: lambda g, x, z, y, c: (g / (1 + x), 0),
    K.OP_EXPM1: lambda g, x, z, y, c: (g * np.exp(x), 0),
    K.OP_SINH: lambda g, x, z, y, c: (g * np.cosh(x), 0),
    K.OP_COSH: lambda g, x, z, y, c: (g * np.sinh(x), 0),
    K.OP_ARCSIN: lambda g, x, z, y, c: (g / np.sqrt(1 - x * x), 0),
    K.OP_ARCCOS: lambda g, x, z, y, c: (-g / np.sqrt(1 - x * x), 0),
    K.OP_ARCTAN: lambda g, x, z, y, c: (g / (1 + x * x), 0),
    K.OP_LOG2: lambda g, x, z, y, c: (g / (x * np.log(2)), 0),
    K.OP_LOG10: lambda g, x, z, y, c: (g / (x * np.log(10)), 0),
    K.OP_EXP2: lambda g, x, z, y, c: (g * np.log(2) * 2.0 ** x, 0),
    K.OP_SOFTPLUS: lambda g, x, z, y, c: (g / (1 + np.exp(-x)), 0),
    K.OP_ERF: lambda g, x, z, y, c: (g * 2 / np.sqrt(np.pi) * np.exp(-x * x), 0),
}


def _elementwise(op, g, x, z, y, c):
    """(d/da, d/db) of one elementwise record, as arrays (broadcast against g)."""
    if op not in ELEMENTWISE_RULES:
        raise AssertionError(f"reference sweep: no rule for elementwise opcode {op}")
    with np.errstate(all="ignore"):
        return ELEMENTWISE_RULES[op](g, x, z, y, c)


def reference_grads(tape, root, seed):
    """Adjoint of every slot reached from ``root`` (seeded with ``seed``), as a dict."""
    adj = {root: np.asarray(seed, np.float64).reshape(-1).copy()}

    def add(s, v):
        """Accumulate ``v`` into slot s (summed when s is a size-1 operand broadcast)."""
        if s < 0 or tape.op[s] == K.OP_CONST:
            return
        v = np.asarray(v, np.float64).reshape(-1)
        if v.size != tape.n[s]:
            assert tape.n[s] == 1, (s, v.size, tape.n[s])
            v = np.array([v.sum()])
        adj[s] = adj.get(s, 0) + v

    for i in range(root, -1, -1):
        if i not in adj:
            continue
        op, g = int(tape.op[i]), adj[i]
        a, b, c = int(tape.in_a[i]), int(tape.in_b[i]), float(tape.param[i])
        if op in (K.OP_LEAF, K.OP_CONST):
            continue
        if K.TRAITS[op] & K.ELEMENTWISE and tape.meta_at[i] >= 0:
            # a broadcast layout: ndim, L, mask a, mask b, outer shape, strides of a, of b;
            # chunks of L elements, each operand contiguous (mask -1) or one element (0)
            p = _payload(tape, i)
            nd, length = int(p[0]), int(p[1])
            shape = [*p[4:4 + nd], length]
            pos = [_positions(np.array([nd + 1, 0, 1, *shape, *p[4 + (j + 1) * nd:
                                                                4 + (j + 2) * nd],
                                        1 if p[2 + j] else 0]))
                   for j in (0, 1)]
            x, z, y = _value(tape, a)[pos[0]], _value(tape, b)[pos[1]], _value(tape, i)
            for s, d, q in zip((a, b), _elementwise(op, g, x, z, y, c), pos):
                out = np.zeros(int(tape.n[s]))
                np.add.at(out, q, np.broadcast_to(d, g.shape))
                add(s, out)
        elif K.TRAITS[op] & K.ELEMENTWISE:
            x = _value(tape, a)
            z = _value(tape, b) if b >= 0 else x
            y = _value(tape, i)
            da, db = _elementwise(op, g, x if x.size == g.size else x[0],
                                  z if z.size == g.size else z[0], y, c)
            add(a, da)
            if b >= 0:
                add(b, db)
        elif op in (K.OP_RESTRIDE, K.OP_PROD):
            p = _payload(tape, i)
            r = int(p[2])
            pos = _positions(p)
            x = _value(tape, a)
            if op == K.OP_RESTRIDE:
                contrib = np.repeat(g, r)[:pos.size]
            else:  # d prod/dx_j = product of the other members of the group
                grp = x[pos].reshape(-1, r)
                others = np.array([[np.prod(np.delete(row, j)) for j in range(r)] for row in grp])
                contrib = (others * g[:, None]).reshape(-1)
            out = np.zeros(int(tape.n[a]))
            np.add.at(out, pos, contrib)
            add(a, out)
        elif op == K.OP_EXTREME:  # tied extremes share the adjoint
            p = _payload(tape, i)
            pos = _positions(p)
            grp = _value(tape, a)[pos].reshape(-1, int(p[2]))
            hit = grp == _value(tape, i)[:, None]
            contrib = (hit / hit.sum(1, keepdims=True) * g[:, None]).reshape(-1)
            out = np.zeros(int(tape.n[a]))
            np.add.at(out, pos, contrib)
            add(a, out)
        elif op in (K.OP_CMP, K.OP_GUARD):  # no gradient through a comparison
            continue
        elif op == K.OP_GATHER:
            out = np.zeros(int(tape.n[a]))
            np.add.at(out, K.gather_index(_payload(tape, i)), g)
            add(a, out)
        elif op == K.OP_SCATTER:
            add(a, g[_payload(tape, i)])
        elif op == K.OP_WHERE:
            w = _value(tape, int(_payload(tape, i)[1]))
            add(a, g * w)
            add(b, g * (1 - w))
        elif op == K.OP_CONCAT:
            p = _payload(tape, i)
            k = int(p[0])
            slots, outer = [int(s) for s in p[1:1 + k]], int(p[1 + k])
            widths = [int(tape.n[s]) // outer if outer else 0 for s in slots]
            parts = np.split(g.reshape(outer, -1), np.cumsum(widths)[:-1], axis=1) if outer \
                else [np.zeros(0)] * k
            for s, part in zip(slots, parts):
                add(s, part)
        elif op in (K.OP_CUMSUM, K.OP_CUMPROD):
            outer, ln, inner = (int(v) for v in _payload(tape, i))
            g3 = g.reshape(outer, ln, inner)
            x3 = _value(tape, a).reshape(outer, ln, inner)
            if op == K.OP_CUMSUM:
                out = np.flip(np.cumsum(np.flip(g3, 1), 1), 1)
            else:  # d y_k / d x_j = prod_{t <= k, t != j} x_t  for j <= k
                out = np.zeros_like(x3)
                for j in range(ln):
                    mask = np.arange(ln) != j
                    for k in range(j, ln):
                        sel = mask[:k + 1]
                        out[:, j, :] += g3[:, k, :] * np.prod(x3[:, :k + 1, :][:, sel, :], 1)
            add(a, out)
        elif op == K.OP_MATMUL:
            bs, m, k, n = (int(v) for v in _payload(tape, i))
            av = _value(tape, a).reshape(bs, m, k)
            bv = _value(tape, b).reshape(bs, k, n)
            g3 = g.reshape(bs, m, n)
            add(a, np.einsum("bmn,bkn->bmk", g3, bv))
            add(b, np.einsum("bmk,bmn->bkn", av, g3))
        elif op == K.OP_CAST:
            add(a, g)
        else:
            raise AssertionError(f"reference sweep: no rule for opcode {op}")
    return adj
