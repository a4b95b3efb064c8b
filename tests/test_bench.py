"""The benchmark's objectives are right, and the runner runs.

* Each objective in ``bench/workloads/`` (written once, run on ndarrays by the NumPy primal and on
  tensors by tapediff) gets tapediff gradients that match central finite differences of the
  NumPy primal, at tiny sizes.
* The hand-written NumPy gradients (Rosenbrock, MLP, GMM) match tapediff's.
* The vectorised GMM and BA objectives equal direct loop transcriptions of ADBench's C++
  reference (``gmm.h``, ``ba.h``), including the column-major packing of the lower triangle
  and the small-angle branch of Rodrigues' rotation.
* ``python -m bench --quick --only scalar`` exits 0; a gradient disagreement fails a case.
* The higher-order cases (``td.grad`` beside ``td.hvp``, ``td.hessian``) check tapediff
  against SciPy's closed forms and the hand-written MLP gradient, time their functions in
  paired rounds, and fail the run when a Hessian is wrong.
* A run checks what it needs before it starts (``--plot`` without matplotlib exits 2 at
  once, naming ``pip install matplotlib``), says what it will cost, presents each target as
  its goal and the measured figure, and sums up peers that did not run in one line each,
  saying how to add them.
* The "tapediff replay" contender (``td.value_and_grad(f, replay=True)``) gives eager
  tapediff's value and gradients on every workload objective, replaying (not recording
  again) at the case's inputs and at new ones; a contender that records again fails the
  run.
* Peak memory: a contender's own process (``python -m bench.memory``, a tapediff one without
  any peer imported) reports its RSS before the first call and its high-water mark; the
  table, ``--json`` and ``--markdown`` give both, the memory target compares eager tapediff's
  peak with PyTorch's, and ``--plot`` draws time and peak memory against problem size.

No peer (PyTorch, JAX, autograd) is needed.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import tapediff as td

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # bench/ is not an installed package; run from the repository
    sys.path.insert(0, ROOT)

from bench.case import Case  # noqa: E402
from bench.workloads import array_ops, ba, elementwise, gmm, higher, mlp, scalar  # noqa: E402
from bench.workloads import linalg as linalg_workload  # noqa: E402


class _NS:
    """The NumPy namespace the runner gives objectives (``bench.backends.NUMPY``) without
    importing the peers: NumPy plus ``logsumexp``."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def logsumexp(a, axis):
        m = np.max(a.detach() if isinstance(a, td.Tensor) else a, axis=axis, keepdims=True)
        return np.log(np.sum(np.exp(a - m), axis=axis)) + np.squeeze(m, axis=axis)


NP = _NS()


def _leaves(params):
    return [[td.tensor(v, requires_grad=True) for v in p] if isinstance(p, list)
            else td.tensor(p, requires_grad=True) for p in params]


def tapediff_grads(f, params, data, xp=NP):
    """Value and gradients of ``f(xp, *params, *data)`` by tapediff."""
    args = _leaves(params)
    loss = f(xp, *args, *data)
    loss.backward()
    grads = [np.array([t.grad.item() for t in a]) if isinstance(a, list) else a.grad.numpy()
             for a in args]
    return float(loss), grads


def fd_grads(f, params, data, eps=1e-6):
    """Central differences of the NumPy primal ``f(NP, *params, *data)``."""
    params = [list(p) if isinstance(p, list) else np.array(p, dtype=np.float64)
              for p in params]
    out = []
    for i, p in enumerate(params):
        flat = np.array(p, dtype=np.float64).ravel()
        g = np.zeros_like(flat)
        for j in range(flat.size):
            h = eps * max(1.0, abs(flat[j]))
            vals = []
            for step in (h, -h):
                q = flat.copy()
                q[j] += step
                trial = list(params)
                trial[i] = list(q) if isinstance(p, list) else q.reshape(np.shape(p))
                vals.append(float(f(NP, *trial, *data)))
            g[j] = (vals[0] - vals[1]) / (2 * h)
        out.append(g.reshape(np.shape(p)))
    return out


def assert_grads_match_fd(case: Case, rtol=1e-5, atol=1e-6, xp=NP):
    value, grads = tapediff_grads(case.objective, case.params, case.data, xp)
    assert value == pytest.approx(float(case.objective(NP, *case.params, *case.data)),
                                  rel=1e-10, abs=1e-12)
    for g, ref in zip(grads, fd_grads(case.objective, case.params, case.data)):
        scale = max(1.0, float(np.max(np.abs(ref))))
        np.testing.assert_allclose(g, ref, rtol=rtol, atol=atol * scale)


def assert_hand_matches_tapediff(case: Case, rtol=1e-9):
    value, grads = tapediff_grads(case.objective, case.params, case.data)
    hv, hgrads = case.hand_grad(*case.params, *case.data)
    assert float(hv) == pytest.approx(value, rel=1e-12)
    for g, h in zip(grads, hgrads):
        scale = float(np.max(np.abs(g)))
        np.testing.assert_allclose(h, g, rtol=rtol, atol=1e-12 * scale)


# -- scalar ----------------------------------------------------------------------------------
def test_scalar_chain_gradient():
    case = Case("scalar", "chain", scalar.chain, [0.5], [40])
    assert_grads_match_fd(case, xp=td)
    assert_grads_match_fd(case, xp=NP)  # the np.sin path (NEP 13) too


def test_horner_gradient_one_leaf_per_coefficient():
    coeffs = list(np.random.default_rng(1).uniform(-1, 1, 9))
    case = Case("scalar", "horner", scalar.horner, [coeffs, 0.9])
    assert_grads_match_fd(case, xp=td)
    # d p / d c_i = x^i
    _, (g_coeffs, _) = tapediff_grads(scalar.horner, [coeffs, 0.9], [], xp=td)
    np.testing.assert_allclose(g_coeffs, 0.9 ** np.arange(9), rtol=1e-12)


# -- elementwise -----------------------------------------------------------------------------
def test_elementwise_gradients():
    rng = np.random.default_rng(2)
    x, y = rng.uniform(-1, 1, 7), rng.uniform(-1, 1, 7)
    assert_grads_match_fd(Case("elementwise", "mixed", elementwise.mixed, [x, y]))
    case = Case("elementwise", "rosenbrock", elementwise.rosenbrock, [x],
                hand_grad=elementwise.rosenbrock_hand)
    assert_grads_match_fd(case)
    assert_hand_matches_tapediff(case)


# -- MLP ---------------------------------------------------------------------------------------
def test_mlp_gradients_and_hand_backprop():
    case = mlp._case((5, 4, 3, 3), 4)
    assert_grads_match_fd(case)
    assert_hand_matches_tapediff(case)


def test_mlp_cases_have_the_brief_sizes():
    names = [c.name for c in mlp.cases(quick=False)]
    assert names == ["MLP 784-256-256-10 batch 64", "MLP 32-64-64-8 batch 16"]


# -- GMM ---------------------------------------------------------------------------------------
def gmm_adbench_loops(alphas, means, icf, x, gamma, m):
    """A line-by-line transcription of ADBench's ``gmm_objective`` (C++, gmm.h)."""
    n, d = x.shape
    k = alphas.shape[0]

    def logsumexp(v):
        mx = max(v)
        return math.log(sum(math.exp(t - mx) for t in v)) + mx

    slse = 0.0
    for ix in range(n):
        main = []
        for ik in range(k):
            xc = x[ix] - means[ik]
            qdiag = np.exp(icf[ik, :d])
            out = qdiag * xc  # Qtimesx
            idx = d
            for i in range(d):
                for j in range(i + 1, d):
                    out[j] += icf[ik, idx] * xc[i]
                    idx += 1
            main.append(alphas[ik] + icf[ik, :d].sum() - 0.5 * float(out @ out))
        slse += logsumexp(main)
    nn = d + m + 1
    C = nn * d * (math.log(gamma) - 0.5 * math.log(2)) - gmm.log_gamma_distrib(0.5 * nn, d)
    prior = 0.0
    for ik in range(k):
        frob = float(np.sum(np.exp(icf[ik, :d]) ** 2) + np.sum(icf[ik, d:] ** 2))
        prior += 0.5 * gamma * gamma * frob - m * icf[ik, :d].sum()
    prior -= k * C
    return -n * d * 0.5 * math.log(2 * math.pi) + slse - n * logsumexp(alphas) + prior


@pytest.mark.parametrize("d,K,n,m", [(1, 2, 4, 0), (3, 2, 5, 0), (4, 3, 6, 2)])
def test_gmm_objective_is_adbenchs(d, K, n, m):
    case = gmm.make_case(d, K, n, seed=d)
    alphas, means, icf = case.params
    x = case.data[0]
    data = [x, gmm.packed_index(d), 1.3, m]
    got = gmm.gmm_objective(NP, alphas, means, icf, *data)
    assert got == pytest.approx(gmm_adbench_loops(alphas, means, icf, x, 1.3, m), rel=1e-12)


def test_log_gamma_distrib_is_the_multivariate_log_gamma():
    special = pytest.importorskip("scipy.special")
    for a, p in [(1.5, 1), (2.0, 3), (33.5, 64)]:
        assert gmm.log_gamma_distrib(a, p) == pytest.approx(special.multigammaln(a, p),
                                                            rel=1e-12)


def test_gmm_packing_is_column_major():
    # d = 4: the strictly lower triangle, column by column, is icf[4:10]
    idx = gmm.packed_index(4)
    row = np.array([0.0, *range(1, 5), *range(5, 11)])  # [0, diag 1..4, lower 5..10]
    Q = row[idx]
    np.testing.assert_array_equal(np.diag(Q), [1, 2, 3, 4])
    np.testing.assert_array_equal(Q[np.triu_indices(4, 1)], 0)
    assert [Q[1, 0], Q[2, 0], Q[3, 0], Q[2, 1], Q[3, 1], Q[3, 2]] == [5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize("d,K,n,m", [(2, 3, 5, 0), (3, 2, 4, 1)])
def test_gmm_gradients_and_hand_gradient(d, K, n, m):
    case = gmm.make_case(d, K, n, seed=7)
    case.data = [case.data[0], case.data[1], 1.0, m]
    assert_grads_match_fd(case)
    assert_hand_matches_tapediff(case)


# -- BA ------------------------------------------------------------------------------------------
def ba_adbench_loops(cams, X, w, cam_idx, pt_idx, feats):
    """A line-by-line transcription of ADBench's ``ba_objective`` (C++, ba.h), reduced to
    half the squared norm of the residuals; the small-angle branch as ``theta^2 < eps``."""
    total = 0.0
    for i in range(len(w)):
        cam, pt = cams[cam_idx[i]], X[pt_idx[i]]
        Xo = pt - cam[3:6]
        rot = cam[0:3]
        sqtheta = float(rot @ rot)
        if sqtheta >= ba.EPS:
            theta = math.sqrt(sqtheta)
            c, s = math.cos(theta), math.sin(theta)
            wv = rot / theta
            Xcam = Xo * c + np.cross(wv, Xo) * s + wv * (float(wv @ Xo) * (1 - c))
        else:
            Xcam = Xo + np.cross(rot, Xo)
        proj = Xcam[0:2] / Xcam[2]
        rsq = float(proj @ proj)
        proj = proj * (1.0 + cam[9] * rsq + cam[10] * rsq * rsq)
        proj = proj * cam[6] + cam[7:9]
        err = w[i] * (proj - feats[i])
        total += float(err @ err) + (1 - w[i] * w[i]) ** 2
    return 0.5 * total


def test_ba_objective_is_adbenchs():
    case = ba.make_case("t", 9, 12, 30, seed=3)  # cameras 0 and 8: zero rotation
    assert np.all(case.params[0][::8, 0:3] == 0)
    got = ba.ba_objective(NP, *case.params, *case.data)
    assert got == pytest.approx(ba_adbench_loops(*case.params, *case.data), rel=1e-12)


def test_ba_gradients_including_the_small_angle_branch():
    case = ba.make_case("t", 3, 4, 6, seed=5)  # camera 0 has rotation exactly 0
    assert_grads_match_fd(case, rtol=1e-5, atol=1e-7)
    _, (g_cams, _, _) = tapediff_grads(case.objective, case.params, case.data)
    assert np.all(np.isfinite(g_cams))


def test_ba_sizes_are_adbenchs():
    assert ba.SIZES["ba1"] == (49, 7_776, 31_843)
    assert [c.size["observations"] for c in ba.cases(quick=False)] == [
        31_843, 36_455, 182_072, 204_472, 225_911]


# -- ops (the issue-3 kernels) ---------------------------------------------------------------
def test_ops_gradients():
    rng = np.random.default_rng(4)
    for case in [
        Case("ops", "elementwise", array_ops.elementwise, [rng.uniform(0.5, 1.5, 6),
                                                           rng.uniform(0.5, 1.5, 6)]),
        Case("ops", "matmul", array_ops.matmul,
             [rng.normal(size=(3, 3)), rng.normal(size=(3, 3))]),
        Case("ops", "indexing", array_ops.indexing, [rng.normal(size=8)],
             [rng.integers(0, 8, 8)]),
    ]:
        assert_grads_match_fd(case)


# -- linalg (issue 12) -----------------------------------------------------------------------
def test_linalg_gradients():
    rng = np.random.default_rng(12)
    a = rng.normal(size=(4, 4)) / 2 + 2 * np.eye(4)
    g = rng.normal(size=(4, 4))
    spd = g @ g.T / 4 + np.eye(4)
    for case in [
        Case("linalg", "slogdet", linalg_workload.slogdet, [a]),
        Case("linalg", "solve", linalg_workload.solve, [a, rng.normal(size=4)]),
        Case("linalg", "cholesky", linalg_workload.cholesky, [spd], [rng.normal(size=(4, 4))]),
    ]:
        assert_grads_match_fd(case)
    assert [c.name for c in linalg_workload.cases(quick=False)] == [
        "slogdet n=500", "solve n=500", "cholesky n=500"]


# -- higher order (issue 13) ------------------------------------------------------------------
def test_higher_cases_check_and_time():
    from bench import runner, targets

    cases = [higher.rosenbrock_hvp_case(50), higher.mlp_hvp_case((5, 4, 3, 3), 4),
             higher.rosenbrock_hessian_case(12)]
    for case in cases:
        res = runner.run_case(case, [], runner.QUICK, "[test]")
        assert res.errors == [], res.errors
        assert res.order[0].startswith("tapediff") and set(res.order) == set(res.timings)
        assert res.memory == {}  # measured in full runs only
    ratios = {m.name for m in runner.run_case(cases[0], [], runner.QUICK, "[t]").metrics}
    assert "tapediff hvp / tapediff grad" in ratios
    full = [c.name for c in higher.cases(quick=False)]
    assert set(targets.HVP_TARGET_CASES) <= set(full)
    assert not set(targets.HVP_TARGET_CASES) & {c.name for c in higher.cases(quick=True)}


def test_a_wrong_hessian_fails_the_higher_case(monkeypatch):
    from bench import runner

    case = higher.rosenbrock_hessian_case(6)
    build = case.build

    def wrong(peers):
        fns, skipped = build(peers)
        run, result = fns[higher.TD_HESS]
        fns[higher.TD_HESS] = (run, lambda: result() * 1.01)
        return fns, skipped

    case.build = wrong
    res = runner.run_case(case, [], runner.QUICK, "[test]")
    assert any("TAPEDIFF HESSIAN IS WRONG" in e and "rosen_hess" in e for e in res.errors)
    assert res.timings == {}  # tapediff's Hessian is not timed


def test_higher_memory_is_the_contenders_own_process():
    rss = higher.rss_of("hvp Rosenbrock n=10,000", higher.TD_GRAD, quick=True)
    assert rss.error == "", rss.error
    assert 10 * 2 ** 20 < rss.baseline <= rss.peak < 4 * 2 ** 30


# -- peak memory: each contender's RSS high-water mark in a process of its own ---------------
def _memory_process(*args):
    proc = subprocess.run([sys.executable, "-m", "bench.memory", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_memory_process_reports_baseline_and_peak():
    from bench.case import PRIMAL, TAPEDIFF

    case = "Rosenbrock n=10,000"  # a --quick case of the elementwise workload
    code, out, err = _memory_process("elementwise", case, TAPEDIFF, "--quick")
    assert code == 0, err
    figures = json.loads(out.splitlines()[-1])
    assert figures["peers_imported"] == []  # a tapediff process imports no peer
    assert 10 * 2 ** 20 < figures["baseline"] <= figures["peak"] < 4 * 2 ** 30
    assert figures["calls"] == 8 and not figures["whole_process"]
    # the runner's side: the same process, launched and read
    from bench import memory

    for contender in (TAPEDIFF, PRIMAL):
        rss = memory.case_rss("elementwise", case, contender, quick=True)
        assert rss.error == "", rss.error
        assert 0 < rss.baseline <= rss.peak and rss.above == rss.peak - rss.baseline
    # unknown names: exit code 2 and what there is; the runner gets an error, not a raise
    code, _, err = _memory_process("elementwise", "no such case", TAPEDIFF, "--quick")
    assert code == 2 and case in err
    rss = memory.case_rss("elementwise", case, "no such contender", quick=True)
    assert rss.peak is None and "no contender 'no such contender'" in rss.error


def _with_memory(settings):
    from bench import runner

    return runner.Settings(**{**settings.__dict__, "memory": True})


def test_the_table_and_json_give_each_contenders_peak_memory(tmp_path):
    from bench import report, runner
    from bench.case import PRIMAL, TAPEDIFF

    assert not runner.QUICK.memory and runner.FULL.memory  # full runs measure it
    assert runner.parse(["--quick", "--memory"]).memory is True
    assert runner.parse(["--no-memory"]).memory is False
    case = next(c for c in array_ops.cases(quick=True) if "matmul" in c.name)
    res = runner.run_case(case, [], _with_memory(runner.QUICK), "[test]")
    assert res.errors == [], res.errors
    assert set(res.memory) == set(res.order) == {TAPEDIFF, PRIMAL}
    for rss in res.memory.values():
        assert rss.error == "" and 0 < rss.baseline <= rss.peak
    lines = report.case_lines(res)
    assert "peak RSS" in lines[1] and "above base" in lines[1]
    row = next(x for x in lines if x.split()[0] == TAPEDIFF)
    assert report.fmt_bytes(res.memory[TAPEDIFF].peak) in row
    assert report.fmt_bytes(res.memory[TAPEDIFF].above, sign=True) in row
    info = {"memory": True, "allocator": "allocator: test", "date": "d", "mode": "quick",
            "cpu": "c", "cores": 2, "load_start": "0", "software": "s", "peers": "p",
            "threads": "t"}
    assert any(x.startswith("memory: 'peak RSS' = RSS high-water mark")
               for x in report.header_lines(info))
    out = tmp_path / "r.json"
    report.to_json(info, [res], [], str(out))
    rss = json.loads(out.read_text())["cases"][0]["contenders"][TAPEDIFF]["rss"]
    assert rss["peak_bytes"] == res.memory[TAPEDIFF].peak
    assert rss["above_baseline_bytes"] == rss["peak_bytes"] - rss["baseline_bytes"] >= 0
    md = tmp_path / "r.md"
    report.to_markdown({**info, "elapsed_s": 1.0, "load_end": "0"}, [res], [], str(md))
    assert "| peak RSS | above base |" in md.read_text()
    # without memory (--quick's default): no memory columns, and the header says so
    res.memory = {}
    assert "peak RSS" not in report.case_lines(res)[1]
    assert report.NO_MEMORY_NOTE in report.header_lines({**info, "memory": False})


# -- the runner ------------------------------------------------------------------------------
def test_a_gradient_mismatch_fails_the_case():
    from bench import runner

    def wrong(x):
        value, (g,) = elementwise.rosenbrock_hand(x)
        return value, [g * 1.01]

    x = np.random.default_rng(0).uniform(-1, 1, 10)
    case = Case("elementwise", "Rosenbrock (wrong hand gradient)", elementwise.rosenbrock,
                [x], hand_grad=wrong)
    res = runner.run_case(case, [], runner.QUICK, "[test]")
    assert any("GRADIENT MISMATCH" in e and "NumPy hand grad" in e for e in res.errors)
    assert "NumPy hand grad" not in res.timings  # not timed
    assert {"tapediff", "NumPy primal"} <= set(res.timings)


def test_quick_scalar_run_exits_zero(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "scalar", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "scalar chain 4,000 ops" in proc.stdout
    assert "tapediff recording" in proc.stdout
    doc = json.loads(out.read_text())
    names = [c["name"] for c in doc["cases"]]
    assert names == ["scalar chain 4,000 ops", "Horner 200 coefficient leaves"]
    assert doc["cases"][0]["contenders"]["tapediff"]["median_s"] > 0
    # the replay contender and its figures
    assert doc["cases"][0]["contenders"]["tapediff replay"]["median_s"] > 0
    metrics = {m["name"] for c in doc["cases"] for m in c["metrics"]}
    assert {"tapediff replay", "replay: recording (first call)"} <= metrics
    assert "replayed scalar chain value+gradient <= 40 ns/record" in proc.stdout
    # what the run costs comes first; targets as goals; no verdict-per-target wall
    assert proc.stdout.splitlines()[1].startswith("expected: about ")
    assert "goal: <= 500 ns/op -- measured " in proc.stdout
    assert "[not measured]" not in proc.stdout and "[MISSED]" not in proc.stdout


# -- what a run needs, what it costs, how it reports -------------------------------------------
def test_plot_without_matplotlib_fails_before_running(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None  # as if not installed\n"
            "from bench.runner import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run(
        [sys.executable, "-c", code, "--quick", "--only", "scalar", "--plot",
         str(tmp_path / "p.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--plot needs matplotlib, which is not installed: pip install matplotlib" in (
        proc.stderr)
    assert proc.stdout == "" and "[1/" not in proc.stderr  # nothing ran
    assert not (tmp_path / "p.png").exists()


def test_output_folder_is_checked_before_running(tmp_path, capsys):
    from bench import runner

    with pytest.raises(SystemExit) as exc:
        runner.parse(["--quick", "--json", str(tmp_path / "no such folder" / "r.json")])
    assert exc.value.code == 2
    assert "--json" in capsys.readouterr().err


def test_expected_cost_is_said_before_the_run():
    from bench import runner

    text, peak = runner.expected_cost(list(runner.WORKLOADS), quick=False, peers=[])
    assert text.startswith("about ") and " min and " in text and "GB peak memory" in text
    assert "--quick takes about 30 s (a minute on a first run" in text
    quick, quick_peak = runner.expected_cost(list(runner.WORKLOADS), quick=True,
                                             peers=["PyTorch"])
    assert quick.startswith("about ") and " s and " in quick and quick_peak < peak
    assert "0.5 GB peak memory with PyTorch (measured on " in quick
    with_peers, peak_with_peers = runner.expected_cost(["gmm"], quick=False,
                                                       peers=["PyTorch", "JAX jit"])
    assert peak_with_peers > peak and "; JAX jit not included)" in with_peers
    # step 4, a memory process per contender, costs its measured time where it runs
    every = list(runner.WORKLOADS)
    for quick in (False, True):
        plain = runner.expected_seconds(every, quick, ["PyTorch"], memory=False)
        measured = runner.expected_seconds(every, quick, ["PyTorch"], memory=True)
        assert measured > plain
        assert measured > runner.expected_seconds(every, quick, [], memory=True)
    default_quick = runner.expected_cost(every, quick=True, peers=[])[0]
    assert default_quick == runner.expected_cost(every, True, [], memory=False)[0]
    assert runner.expected_cost(every, quick=False, peers=[])[0] == runner.expected_cost(
        every, False, [], memory=True)[0]


def _timed(*per_round):
    from bench.timing import Timing

    return Timing(samples=list(per_round))


def test_targets_are_goals_with_the_measured_figure():
    from bench import report, runner, targets
    from bench.case import PRIMAL, TAPEDIFF

    def rosenbrock(ratio):
        return runner.CaseResult("elementwise", "Rosenbrock n=1,000,000", {"n": 10 ** 6},
                                 timings={TAPEDIFF: _timed(ratio, ratio), PRIMAL: _timed(1, 1)})

    for t in targets.TARGETS:  # every goal reads as the measured figure does
        assert "{" not in t.goal and ("<= " in t.goal or ">= " in t.goal), t.goal
    text = "Rosenbrock n=10^6 <= 2.5x the NumPy primal"
    for ratio, verdict in ((2.0, "met"), (3.0, "missed")):
        lines = report.target_lines(targets.evaluate([rosenbrock(ratio)]), quick=False)
        i = lines.index(f"   {text}")
        assert lines[i + 1] == (f"      goal: <= 2.5x primal -- measured {ratio:.2f}x primal "
                                f"(Rosenbrock n=1,000,000): {verdict}")
    # a target read from several cases: how many met it, then each case's figure
    lines = report.target_lines(targets.evaluate([rosenbrock(2.0), rosenbrock(3.0)]), False)
    i = lines.index(f"   {text}")
    assert lines[i + 1:i + 4] == [
        "      goal: <= 2.5x primal -- met in 1 of 2 cases:",
        "         measured 2.00x primal (Rosenbrock n=1,000,000): met",
        "         measured 3.00x primal (Rosenbrock n=1,000,000): missed"]


def test_peers_that_did_not_run_are_summarised_one_line_each(monkeypatch):
    from bench import backends, report, runner, targets
    from bench.case import AUTOGRAD_NAME, JAX_NAME, TORCH_NAME

    missing = {TORCH_NAME: "not installed", JAX_NAME: "not installed",
               AUTOGRAD_NAME: "left out by --peers"}
    lines = report.target_lines(targets.evaluate([]), quick=True, missing=missing)
    assert not any("[not measured]" in x or "[MISSED]" in x for x in lines)
    torch_targets = [t.text for t in targets.TARGETS if t.peer == TORCH_NAME]
    others = [t.text for t in targets.TARGETS if t.peer != TORCH_NAME]
    assert len(torch_targets) == 5
    assert lines[1:] == [
        "   not measured (quick sizes are not the targets' sizes, or --only left their cases "
        "out): " + "; ".join(others),
        "   PyTorch not installed, not compared: 5 target(s) not measured: "
        + "; ".join(torch_targets)
        + "; add it with pip install torch --index-url https://download.pytorch.org/whl/cpu",
        '   JAX jit not installed, not compared: no target needs it; add it with '
        'pip install "jax>=0.4.30"',
        "   autograd left out by --peers, not compared: no target needs it",
    ]
    # the header says how to add peers, PyTorch's CPU build included
    monkeypatch.setattr(backends, "PEERS", {
        n: backends.Peer(n, None, f"No module named '{n}'") for n in missing})
    info = runner.machine_info([], quick=True)
    assert info["peers"] == ("PyTorch: not installed; JAX jit: not installed; "
                             "autograd: not installed")
    info.update(allocator="allocator: test", expected="about 1 s")
    header = report.header_lines(info)
    hint = header[header.index(f"peers: {info['peers']}") + 1]
    assert 'pip install -e ".[bench]"' in hint
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in hint


def _result(workload, name, size, peaks, seconds=1e-3):
    """A CaseResult timed and measured: ``peaks`` is contender -> peak RSS in bytes."""
    from bench import runner
    from bench.memory import Rss

    res = runner.CaseResult(workload, name, size, order=list(peaks))
    for i, (contender, peak) in enumerate(peaks.items()):
        res.timings[contender] = _timed(seconds * (i + 1), seconds * (i + 1))
        res.timings[contender].ratios = [float(i + 1)] * 2
        res.memory[contender] = Rss(peak=peak, baseline=peak // 2)
    return res


def test_the_peak_memory_target_compares_with_pytorch():
    from bench import report, targets
    from bench.case import PRIMAL, TAPEDIFF, TORCH_NAME

    text = "peak RSS of eager tapediff <= 1.5x PyTorch's (MLP, GMM, BA)"
    size = {"d": 2, "K": 5, "n": 1000}
    results = [_result("gmm", "GMM d=2 K=5 n=1,000", size, {TAPEDIFF: 400e6, TORCH_NAME: 320e6}),
               _result("gmm", "GMM d=64 K=25 n=10,000", size, {TAPEDIFF: 9e9, TORCH_NAME: 3e9}),
               _result("mlp", "MLP 32-64-64-8 batch 16", {}, {TAPEDIFF: 2e8, PRIMAL: 1e8})]
    verdict = next(v for v in targets.evaluate(results) if v.target == text)
    assert verdict.peer == TORCH_NAME and verdict.goal == "<= 1.5x PyTorch's peak RSS"
    assert verdict.rows == [("GMM d=2 K=5 n=1,000", "1.25x PyTorch's peak RSS", True),
                            ("GMM d=64 K=25 n=10,000", "3.00x PyTorch's peak RSS", False)]
    lines = report.target_lines([verdict], quick=False)
    assert lines[1:3] == [f"   {text}",
                          "      goal: <= 1.5x PyTorch's peak RSS -- met in 1 of 2 cases:"]
    # memory not measured (--quick, --no-memory), or no PyTorch: not measured, and said why
    for r in results:
        r.memory = {}
    verdict = next(v for v in targets.evaluate(results) if v.target == text)
    assert verdict.met is None
    lines = report.target_lines([verdict], quick=True, memory=False)
    assert "or memory was not measured): " in lines[1] and text in lines[1]


def test_plot_draws_time_and_peak_memory_against_size(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from bench import report
    from bench.case import PRIMAL, TAPEDIFF, TORCH_NAME

    results = [_result("gmm", f"GMM d={d} K={k} n={n:,}", {"d": d, "K": k, "n": n},
                       {TAPEDIFF: 2e8 * d, PRIMAL: 1e8 * d, TORCH_NAME: 3e8 * d})
               for d, k, n in [(2, 5, 1000), (10, 5, 1000), (10, 5, 10_000)]]
    results += [_result("elementwise", f"{f} n={n:,}", {"n": n}, {TAPEDIFF: 2e8, PRIMAL: 1e8})
                for f in ("mixed", "Rosenbrock") for n in (1000, 10_000)]
    results[-1].memory = {}  # a case without memory figures still has its time drawn
    drawn = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig),
                                                                  save(fig, *a, **k)))
    path = tmp_path / "bench.png"
    assert report.plot(results, str(path)) == f"plot written to {path}"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = drawn[0].axes
    assert [ax.get_title() for ax in axes] == [
        "gmm: time per call", "gmm: peak memory of each contender's own process",
        "elementwise: time per call",
        "elementwise: peak memory of each contender's own process"]
    assert axes[0].get_ylabel() == "median time per call (ms)\nlower is better"
    assert axes[1].get_ylabel() == "peak RSS (GB)\nlower is better"  # up to 3 GB
    assert axes[3].get_ylabel() == "peak RSS (MB)\nlower is better"
    assert axes[0].get_xlabel() == "problem size (n K d)"
    assert len(axes[1].get_lines()) == 3  # a line per contender
    assert len(axes[2].get_lines()) == 4 and len(axes[3].get_lines()) == 4  # and objective
    gb = sorted(y for line in axes[1].get_lines() for y in line.get_ydata())
    assert gb[0] == pytest.approx(0.2) and gb[-1] == pytest.approx(3.0)


# -- replay ------------------------------------------------------------------------------------
def _replay_cases():
    rng = np.random.default_rng(8)
    coeffs = list(rng.uniform(-1, 1, 12))
    return [
        Case("scalar", "chain", scalar.chain, [0.5], [40], td_ns="td", rtol=1e-9,
             replay=True),
        Case("scalar", "horner", scalar.horner, [coeffs, 0.9], td_ns="td", rtol=1e-9,
             replay=True),
        mlp._case((5, 4, 3, 3), 4),
        gmm.make_case(3, 2, 7, seed=3),
        ba.make_case("t", 3, 4, 6, seed=5),  # camera 0: the small-angle branch
    ]


def _perturbed(case: Case, scale: float) -> Case:
    params = [[v * scale for v in p] if isinstance(p, list) else np.asarray(p) * scale
              for p in case.params]
    return Case(case.workload, case.name, case.objective, params, case.data,
                td_ns=case.td_ns, rtol=case.rtol, replay=True)


def _assert_agree(got, ref, rtol):
    (v, gs), (v_ref, gs_ref) = got, ref
    assert v == pytest.approx(v_ref, rel=rtol, abs=1e-12)
    assert len(gs) == len(gs_ref)
    for g, gr in zip(gs, gs_ref):
        scale = max(float(np.max(np.abs(gr))), 1e-300)
        np.testing.assert_allclose(g, gr, rtol=rtol, atol=1e-9 * scale)


@pytest.mark.parametrize("case", _replay_cases(), ids=lambda c: f"{c.workload}-{c.name}")
def test_replay_contender_matches_eager_tapediff(case):
    from bench import backends

    assert case.replay
    eager = backends.tapediff(case)
    rep = backends.tapediff_replay(case)  # its first call records
    fn = rep.replayed
    assert fn.recordings == 1 and rep.first_call_s > 0
    for _ in range(2):
        _assert_agree(rep.value_and_grads(), eager.value_and_grads(), case.rtol)
    # the timed function replays too
    rep.run()
    assert (fn.recordings, fn.replays) == (1, 3)
    assert rep.verify() is None
    assert len(fn.tape) > 0
    # at new parameter values (dynamic inputs written into the tape), still one recording
    args = backends.replay_function(case)[1]
    moved = _perturbed(case, 1.03)
    v, grads = fn(*[np.asarray(p, dtype=np.float64) for p in moved.params],
                  *args[len(case.params):])
    assert fn.recordings == 1, fn.last_guard
    _assert_agree((float(v), [np.asarray(g) for g in grads]),
                  backends.tapediff(moved).value_and_grads(), case.rtol)


def test_every_replay_workload_case_has_the_replay_contender():
    for module in (scalar, elementwise, mlp, gmm, ba):
        assert all(c.replay for c in module.cases(quick=True))
    assert [c.name for c in mlp.cases(quick=False) if c.threads] == [
        "MLP 784-256-256-10 batch 64"]
    assert [c.name for c in gmm.cases(quick=False) if c.threads] == ["GMM d=10 K=5 n=10,000"]


def test_a_replay_that_records_again_fails_the_case(monkeypatch):
    from bench import backends, runner

    build = backends.tapediff_replay

    def rerecording(case):
        c = build(case)
        shapes = iter(range(2, 10 ** 6))
        # a new input shape on every timed call: each one records again
        c.run = lambda: c.replayed(np.ones(next(shapes)))
        return c

    monkeypatch.setattr(backends, "tapediff_replay", rerecording)
    x = np.random.default_rng(0).uniform(-1, 1, 5)
    case = Case("elementwise", "re-recording", elementwise.rosenbrock, [x], replay=True)
    res = runner.run_case(case, [], runner.QUICK, "[test]")
    assert any("tapediff replay recorded" in e for e in res.errors), res.errors


def test_replay_break_even_against_jax():
    from bench.replay_figures import break_even

    # faster steady state and cheaper first call: ahead for every N
    assert break_even(0.01, 1e-3, 1.0, 2e-3) == (math.inf, "always")
    # cheaper first call, slower calls: ahead while 0.01 + N 3e-3 < 1 + N 2e-3, N < 990
    n, text = break_even(0.01, 3e-3, 1.0, 2e-3)
    assert n == 989 and text.startswith("up to 989 calls")
    # dearer first call, faster calls: ahead once 2 + N 1e-3 < 1 + N 2e-3, N > 1000
    n, text = break_even(2.0, 1e-3, 1.0, 2e-3)
    assert n == 1001 and text.startswith("after 1,001 calls")
    assert break_even(2.0, 3e-3, 1.0, 2e-3) == (0.0, "never")


def test_replay_throughput_from_two_threads_records_once_per_thread():
    from bench.replay_figures import THREADS, THREADS_CONTROL, thread_throughput

    metrics = {m.name: m for m in thread_throughput(mlp._case((5, 4, 3, 3), 4), quick=True)}
    assert metrics[THREADS].value > 0 and metrics[THREADS_CONTROL].value > 0


_WITHOUT_EXTRAS = """
import importlib.abc, runpy, sys

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("scipy", "torch", "jax", "autograd", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, _Absent())
import bench.runner  # every workload module, as the main job imports them
for module in bench.runner.WORKLOADS.values():
    module.cases(True)
sys.argv = ["bench", "--only", "higher", "--quick"]
runpy.run_module("bench", run_name="__main__")
"""


def test_the_main_job_needs_only_the_runtime_dependencies():
    """The Quickstart's first command installs tapediff alone (numpy, numba): every workload
    must build its cases, and the higher-order one run, with SciPy, PyTorch, JAX, autograd and
    matplotlib absent."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "closed-form rosen_hess" in proc.stdout
