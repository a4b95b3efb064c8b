"""Tools for testing code differentiated with tapediff (and tapediff itself).

* ``gradcheck(fn, inputs)`` compares the gradients ``backward()`` computes for ``fn`` with
  central finite differences, in the spirit of ``torch.autograd.gradcheck``, and raises
  ``GradcheckError`` (a ``RuntimeError``) naming the first mismatch.
* ``tapediff.testing.strategies`` holds Hypothesis strategies: shapes, tensors, and random
  differentiable programs whose inputs stay in every operation's domain.  It needs the
  ``hypothesis`` package and is therefore not imported here; import it explicitly.

* ``gradgradcheck(fn, inputs)`` does the same for second derivatives: the derivatives of
  the recorded gradient (``backward(create_graph=True)``, nested ``td.grad``) against
  central differences of the first-order gradient.

>>> import tapediff as td
>>> from tapediff.testing import gradcheck
>>> x = td.tensor([0.5, 1.0, 2.0], requires_grad=True)
>>> gradcheck(lambda x: (td.exp(x) * x).sum(), x)
True
"""
from ._gradcheck import GRADCHECK_DEFAULTS, GradcheckError, gradcheck, gradgradcheck

__all__ = ["gradcheck", "gradgradcheck", "GradcheckError", "GRADCHECK_DEFAULTS"]
