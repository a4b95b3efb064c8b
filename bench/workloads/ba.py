"""ADBench's bundle adjustment (BA) objective: reprojection residuals of points in cameras.

Camera layout, as ADBench (``src/cpp/shared/ba.h``), 11 parameters per camera::

    [r1 r2 r3 | C1 C2 C3 | f | u0 v0 | k1 k2]
     rotation   center    focal principal radial distortion
     (angle-axis)               point

For observation i of point X in camera c, with weight w_i and measured feature (u, v)::

    Xcam = R(r) (X - C)                       Rodrigues rotation of angle |r| about r/|r|
    p = Xcam[:2] / Xcam[2]                    perspective divide
    p = p (1 + k1 |p|^2 + k2 |p|^4)           radial distortion
    proj = f p + (u0, v0)
    reprojection residual = w_i (proj - (u, v))     (2 per observation)
    weight residual       = 1 - w_i^2               (1 per observation)

The objective is half the squared norm of all residuals; its gradient is taken with respect
to the cameras, the points and the weights.  Rodrigues' formula has ADBench's small-angle
branch: when theta^2 = |r|^2 < eps (machine epsilon, as Ceres) the rotation is
X + r x X.  Vectorised, both branches are computed and ``where`` picks one; theta is
computed from ``where(small, 1, theta^2)`` so that the unused branch has no 0/0 whose NaN
would leak into the gradient (the "double where").

Sizes are those of ADBench's ba1-ba5 data files (cameras n, points m, observations p), e.g.
``ba1_n49_m7776_p31843``; the data are random (see ``make_case``), not ADBench's files.
"""
from __future__ import annotations

import numpy as np

from ..case import Case

WORKLOAD = "ba"
# name: (cameras, points, observations), from ADBench's data file names
SIZES = {
    "ba1": (49, 7_776, 31_843),
    "ba2": (21, 11_315, 36_455),
    "ba3": (161, 48_126, 182_072),
    "ba4": (372, 47_423, 204_472),
    "ba5": (257, 65_132, 225_911),
}
QUICK_SIZES = {"ba-tiny": (8, 300, 1_000)}
EPS = float(np.finfo(np.float64).eps)
_NEXT = np.array([1, 2, 0])  # cross(a, b) = a[next] b[prev] - a[prev] b[next]
_PREV = np.array([2, 0, 1])


def cross(a, b):
    """Row-wise cross product of (p, 3) arrays."""
    return a[:, _NEXT] * b[:, _PREV] - a[:, _PREV] * b[:, _NEXT]


def rodrigues(xp, rot, X):
    """Rotate the rows of X by the angle-axis vectors in the rows of rot."""
    sqtheta = xp.sum(rot * rot, axis=1, keepdims=True)
    small = sqtheta < EPS
    theta = xp.sqrt(xp.where(small, 1.0, sqtheta))
    costheta, sintheta = xp.cos(theta), xp.sin(theta)
    w = rot / theta
    tmp = xp.sum(w * X, axis=1, keepdims=True) * (1.0 - costheta)
    large = X * costheta + cross(w, X) * sintheta + w * tmp
    return xp.where(small, X + cross(rot, X), large)


def project(xp, cam, X):
    """Project the rows of X (p, 3) through the cameras in the rows of cam (p, 11)."""
    Xcam = rodrigues(xp, cam[:, 0:3], X - cam[:, 3:6])
    p = Xcam[:, 0:2] / Xcam[:, 2:3]
    rsq = xp.sum(p * p, axis=1, keepdims=True)
    p = p * (1.0 + cam[:, 9:10] * rsq + cam[:, 10:11] * rsq * rsq)
    return p * cam[:, 6:7] + cam[:, 7:9]


def ba_objective(xp, cams, X, w, cam_idx, pt_idx, feats):
    """Half the squared norm of ADBench's BA residuals (see the module docstring)."""
    proj = project(xp, cams[cam_idx], X[pt_idx])  # (p, 2)
    reproj = w[:, None] * (proj - feats)
    w_err = 1.0 - w * w
    return 0.5 * (xp.sum(reproj * reproj) + xp.sum(w_err * w_err))


def make_case(label: str, n_cams: int, n_pts: int, n_obs: int, seed: int = 0) -> Case:
    """Random cameras about 10 units in front of points in [-1, 1]^3, every point seen at
    least once, features = the true projections plus noise.  One camera in eight has an
    exactly zero rotation, so the small-angle branch is exercised."""
    rng = np.random.default_rng(seed)
    cams = np.empty((n_cams, 11))
    cams[:, 0:3] = rng.normal(0, 0.1, (n_cams, 3))
    cams[::8, 0:3] = 0.0
    cams[:, 3:6] = rng.normal(0, 0.5, (n_cams, 3)) - [0.0, 0.0, 10.0]
    cams[:, 6] = rng.uniform(0.8, 1.2, n_cams)
    cams[:, 7:9] = rng.normal(0, 0.05, (n_cams, 2))
    cams[:, 9:11] = rng.normal(0, 0.01, (n_cams, 2))
    X = rng.uniform(-1, 1, (n_pts, 3))
    w = rng.uniform(0.5, 1.5, n_obs)
    pt_idx = rng.permutation(np.arange(n_obs) % n_pts)
    cam_idx = rng.integers(0, n_cams, n_obs)
    feats = project(np, cams[cam_idx], X[pt_idx]) + rng.normal(0, 0.01, (n_obs, 2))
    return Case(WORKLOAD, f"BA {label} ({n_cams} cams, {n_pts:,} pts, {n_obs:,} obs)",
                ba_objective, [cams, X, w], [cam_idx, pt_idx, feats],
                size={"cameras": n_cams, "points": n_pts, "observations": n_obs}, replay=True)


def cases(quick: bool) -> list[Case]:
    sizes = QUICK_SIZES if quick else SIZES
    return [make_case(label, *s) for label, s in sizes.items()]
