"""What a user meets in ``help(tapediff)`` and on every public name."""
import inspect
import pickle
import pydoc
import re

import numpy as np
import pytest

import tapediff as td

MODULES = [td, td.linalg, td.special, td.testing]


def _public(module):
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.ismodule(obj) or isinstance(obj, np.dtype) or obj is np.linalg.LinAlgError:
            continue
        yield f"{module.__name__}.{name}", obj


@pytest.mark.parametrize("qualified, obj", [p for m in MODULES for p in _public(m)])
def test_every_public_name_has_a_docstring(qualified, obj):
    doc = inspect.getdoc(obj)
    assert doc and len(doc) >= 10, f"{qualified} has no docstring"


def test_help_shows_no_private_module_and_no_private_path():
    text = pydoc.render_doc(td, renderer=pydoc.plaintext)
    contents = text.split("PACKAGE CONTENTS", 1)[1].split("\n\n", 1)[0].split()
    assert [c for c in contents if c.startswith("_")] == ["__main__", "_src"], contents
    assert "SUBMODULES" not in text  # no private module reachable as an attribute
    assert re.findall(r"tapediff\._\w+", text) == []
    # the overview comes first
    assert text.index("tapediff") < text.index("PACKAGE CONTENTS")


@pytest.mark.parametrize("cls", [td.Tensor, td.Tape, td.BroadcastError, td.GuardError,
                                 td.Replayed, td.no_grad, td.enable_grad, td.set_grad_enabled])
def test_public_classes_carry_the_package_name(cls):
    assert cls.__module__ == "tapediff" and getattr(td, cls.__name__) is cls


def test_a_tensor_pickles_through_the_public_name():
    x = td.tensor([1.0, 2.0])
    y = pickle.loads(pickle.dumps(x))
    assert type(y) is td.Tensor
    np.testing.assert_array_equal(y.numpy(), x.numpy())
