"""Central finite differences (minitransformer.gradcheck), and the one tolerance every
gradient test uses."""
import numpy as np

from minitransformer.gradcheck import finite_differences

RTOL = 1e-5       # relative error bound (issue #2): never loosened; reject bad draws with assume


def numerical_grad(f, x, dout):
    """d/dx of sum(f() * dout), f a closure over x (perturbed in place): the engine's
    finite_differences, whose result knows its rounding noise (.noise)."""
    return finite_differences(lambda _: f(), x, dout)


def assert_grad_close(analytic, numeric, name="grad"):
    """Elementwise |a - n| <= RTOL * (|n| + scale), scale = the tensor's largest entry: a
    relative bound that does not blow up on entries that are zero by structure. Where the
    whole tensor is that small (e.g. b_K, whose gradient is exactly 0 because softmax ignores
    a constant added to every score), the bound is the finite differences' own noise."""
    analytic = np.asarray(analytic)
    noise = getattr(numeric, "noise", 0.0)
    numeric = np.asarray(numeric)
    assert analytic.shape == numeric.shape, f"{name}: shape {analytic.shape} != {numeric.shape}"
    scale = max(np.abs(numeric).max(initial=0.0), noise / RTOL, 1e-300)
    worst = float((np.abs(analytic - numeric) / (np.abs(numeric) + scale)).max(initial=0.0))
    assert worst <= RTOL, (f"{name}: relative error {worst:.2e} > {RTOL:.0e} "
                           f"(largest entry {np.abs(numeric).max(initial=0):.2e})")
