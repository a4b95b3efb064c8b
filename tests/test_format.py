"""Tests for tapediff._src._format.format_tensor.

The expected strings below were produced by PyTorch 2.13's ``repr`` (with
``torch.set_default_dtype(torch.float64)`` and ``dtype=torch.X`` spelled
``dtype=X``) and are hard-coded so that they act as the specification without
needing torch installed. One property test compares against torch directly
when it is available.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

try:
    from tapediff._src._format import format_tensor
except Exception:  # noqa: BLE001 - any failure of the package __init__, not just ImportError
    # The rest of the package may be mid-edit; _format.py only needs numpy,
    # so load it straight from its file.
    _path = Path(__file__).resolve().parents[1] / "tapediff" / "_src" / "_format.py"
    _spec = importlib.util.spec_from_file_location("tapediff_format_standalone", _path)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    format_tensor = _module.format_tensor

nan, inf = np.nan, np.inf
RG = ["requires_grad=True"]

CASES = [
    pytest.param(np.array(5.0), [], "tensor(5.)", id="scalar-int-mode"),
    pytest.param(np.array(-3.14159), [], "tensor(-3.1416)", id="scalar-fixed"),
    pytest.param(np.array(7), [], "tensor(7)", id="scalar-int"),
    pytest.param(np.array(False), [], "tensor(False)", id="scalar-bool"),
    pytest.param(np.array([2.0, 2.0, 2.0]), [], "tensor([2., 2., 2.])", id="vector-int-mode"),
    pytest.param(
        np.array([0.1, 0.2, 0.3]),
        RG,
        "tensor([0.1000, 0.2000, 0.3000], requires_grad=True)",
        id="fixed-requires-grad",
    ),
    pytest.param(
        np.array([[1.5, -2.25, 100.0], [-0.5, 3.0, 42.125], [7.0, -8.5, 0.25]]),
        [],
        "tensor([[  1.5000,  -2.2500, 100.0000],\n"
        "        [ -0.5000,   3.0000,  42.1250],\n"
        "        [  7.0000,  -8.5000,   0.2500]])",
        id="matrix-fixed-aligned",
    ),
    pytest.param(
        np.array([[1.0, -0.001, 2.5e5], [3.25, 12.0, -7.5e-3], [0.0, 1e-2, -6.0]]),
        [],
        "tensor([[ 1.0000e+00, -1.0000e-03,  2.5000e+05],\n"
        "        [ 3.2500e+00,  1.2000e+01, -7.5000e-03],\n"
        "        [ 0.0000e+00,  1.0000e-02, -6.0000e+00]])",
        id="matrix-sci",
    ),
    pytest.param(np.array([1e-8, 1e10]), [], "tensor([1.0000e-08, 1.0000e+10])", id="sci"),
    pytest.param(np.array([1.5e9, 2.0]), [], "tensor([1.5000e+09, 2.0000e+00])", id="sci-large"),
    pytest.param(
        np.array([nan, inf, -inf, 1.5]), [], "tensor([   nan,    inf,   -inf, 1.5000])", id="nonfinite-fixed"
    ),
    pytest.param(
        np.array([nan, inf, -inf, 2.0]), [], "tensor([nan, inf, -inf, 2.])", id="nonfinite-int-mode"
    ),
    pytest.param(np.array([nan, -inf, 0.0]), [], "tensor([nan, -inf, 0.])", id="only-nonfinite-and-zero"),
    pytest.param(np.array([-0.0, 0.5]), [], "tensor([-0.0000, 0.5000])", id="negative-zero"),
    pytest.param(
        np.array([[-0.0, 10.0], [3.0, -0.0]]),
        [],
        "tensor([[-0., 10.],\n        [ 3., -0.]])",
        id="negative-zero-int-mode",
    ),
    pytest.param(np.array([1, -20, 300]), [], "tensor([  1, -20, 300])", id="ints"),
    pytest.param(
        np.array([[1, -20], [300, 4]]), [], "tensor([[  1, -20],\n        [300,   4]])", id="int-matrix"
    ),
    pytest.param(
        np.array([[True, False], [False, True]]),
        [],
        "tensor([[ True, False],\n        [False,  True]])",
        id="bools",
    ),
    pytest.param(
        np.array([1.5, 2.0], dtype=np.float32), [], "tensor([1.5000, 2.0000], dtype=float32)", id="float32"
    ),
    pytest.param(
        np.array([1.5, 2.0], dtype=np.float32),
        RG,
        "tensor([1.5000, 2.0000], dtype=float32, requires_grad=True)",
        id="float32-dtype-before-suffixes",
    ),
    pytest.param(
        np.array([0.25, -1.0], dtype=np.float16),
        [],
        "tensor([ 0.2500, -1.0000], dtype=float16)",
        id="float16",
    ),
    pytest.param(np.array([1, 2, 3], dtype=np.int32), [], "tensor([1, 2, 3], dtype=int32)", id="int32"),
    pytest.param(np.array([0, 255], dtype=np.uint8), [], "tensor([  0, 255], dtype=uint8)", id="uint8"),
    pytest.param(np.zeros((0,)), [], "tensor([])", id="empty"),
    pytest.param(np.zeros((0, 3)), [], "tensor([], size=(0, 3))", id="empty-2d"),
    pytest.param(
        np.zeros((2, 0, 3), dtype=np.int64),
        [],
        "tensor([], size=(2, 0, 3), dtype=int64)",
        id="empty-int64-names-dtype",
    ),
    pytest.param(
        np.zeros((0,), dtype=np.float32),
        RG,
        "tensor([], dtype=float32, requires_grad=True)",
        id="empty-float32-requires-grad",
    ),
    pytest.param(
        np.arange(2400.0).reshape(2, 1200) / 4,
        [],
        "tensor([[0.0000e+00, 2.5000e-01, 5.0000e-01,  ..., 2.9925e+02, 2.9950e+02,\n"
        "         2.9975e+02],\n"
        "        [3.0000e+02, 3.0025e+02, 3.0050e+02,  ..., 5.9925e+02, 5.9950e+02,\n"
        "         5.9975e+02]])",
        id="summarized-2x1200",
    ),
    pytest.param(
        np.arange(1001),
        [],
        "tensor([   0,    1,    2,  ...,  998,  999, 1000])",
        id="summarized-int-1d",
    ),
    pytest.param(
        np.arange(1001.0) / 1000 + 1,
        [],
        "tensor([1.0000, 1.0010, 1.0020,  ..., 1.9980, 1.9990, 2.0000])",
        id="summarized-fixed-1d",
    ),
    pytest.param(
        np.arange(1010).reshape(101, 10) - 500,
        [],
        "tensor([[-500, -499, -498,  ..., -493, -492, -491],\n"
        "        [-490, -489, -488,  ..., -483, -482, -481],\n"
        "        [-480, -479, -478,  ..., -473, -472, -471],\n"
        "        ...,\n"
        "        [ 480,  481,  482,  ...,  487,  488,  489],\n"
        "        [ 490,  491,  492,  ...,  497,  498,  499],\n"
        "        [ 500,  501,  502,  ...,  507,  508,  509]])",
        id="summarized-rows",
    ),
    pytest.param(
        np.arange(30.0) / 8,
        [],
        "tensor([0.0000, 0.1250, 0.2500, 0.3750, 0.5000, 0.6250, 0.7500, 0.8750, 1.0000,\n"
        "        1.1250, 1.2500, 1.3750, 1.5000, 1.6250, 1.7500, 1.8750, 2.0000, 2.1250,\n"
        "        2.2500, 2.3750, 2.5000, 2.6250, 2.7500, 2.8750, 3.0000, 3.1250, 3.2500,\n"
        "        3.3750, 3.5000, 3.6250])",
        id="wrapped-row",
    ),
    pytest.param(
        np.array([[0.5, -1.25, 3.0, 4.75], [10.5, -0.125, 7.0, 2.0], [1.0, 2.0, -3.5, 0.25]]),
        RG,
        "tensor([[ 0.5000, -1.2500,  3.0000,  4.7500],\n"
        "        [10.5000, -0.1250,  7.0000,  2.0000],\n"
        "        [ 1.0000,  2.0000, -3.5000,  0.2500]], requires_grad=True)",
        id="matrix-requires-grad",
    ),
    pytest.param(
        np.arange(1.0, 17.0).reshape(2, 8) / 8,
        RG,
        "tensor([[0.1250, 0.2500, 0.3750, 0.5000, 0.6250, 0.7500, 0.8750, 1.0000],\n"
        "        [1.1250, 1.2500, 1.3750, 1.5000, 1.6250, 1.7500, 1.8750, 2.0000]],\n"
        "       requires_grad=True)",
        id="suffix-on-new-line",
    ),
    pytest.param(
        np.array([[1.5, 2.5], [3.5, -4.5]]),
        ["grad_fn=<MulBackward0>"],
        "tensor([[ 1.5000,  2.5000],\n        [ 3.5000, -4.5000]], grad_fn=<MulBackward0>)",
        id="grad-fn",
    ),
    pytest.param(
        np.arange(12.0).reshape(2, 2, 3) - 5.5,
        [],
        "tensor([[[-5.5000, -4.5000, -3.5000],\n"
        "         [-2.5000, -1.5000, -0.5000]],\n"
        "\n"
        "        [[ 0.5000,  1.5000,  2.5000],\n"
        "         [ 3.5000,  4.5000,  5.5000]]])",
        id="three-d",
    ),
]


@pytest.mark.parametrize(("values", "suffixes", "expected"), CASES)
def test_matches_pytorch_repr(values: np.ndarray, suffixes: list[str], expected: str) -> None:
    assert format_tensor(values, suffixes) == expected


def test_suffixes_default_to_none() -> None:
    assert format_tensor(np.array([1.0, 2.5])) == "tensor([1.0000, 2.5000])"


def test_rejects_complex() -> None:
    with pytest.raises(TypeError):
        format_tensor(np.array([1 + 2j]))


# Shapes from 0-d to 3-d holding at most ~30 elements (empty ones included).
_MAX_SIDE = {0: 0, 1: 30, 2: 6, 3: 3}
_shapes = st.integers(0, 3).flatmap(
    lambda ndim: st.tuples(*[st.integers(0, _MAX_SIDE[ndim])] * ndim)
)
# Mix of arbitrary doubles (huge, tiny, subnormal, nan, inf), integral values
# (PyTorch's int mode) and moderate values (fixed-point mode).
_elements = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10**6, 10**6).map(float),
    st.floats(-1000.0, 1000.0),
    st.sampled_from([0.0, -0.0, nan, inf, -inf, 1e-4, 1e8, 1e-8, 1e10]),
)


@pytest.fixture(scope="module")
def torch_float64_default():
    """torch with float64 as its default dtype, so it annotates dtypes exactly as tapediff does."""
    torch = pytest.importorskip("torch")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch
    torch.set_default_dtype(previous)


@settings(max_examples=500, deadline=None)
@given(values=_shapes.flatmap(lambda s: arrays(np.float64, s, elements=_elements)), requires_grad=st.booleans())
def test_matches_torch_on_random_float64(torch_float64_default, values: np.ndarray, requires_grad: bool) -> None:
    expected = repr(torch_float64_default.tensor(values, requires_grad=requires_grad))
    assert format_tensor(values, RG if requires_grad else []) == expected
