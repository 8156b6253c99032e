"""Central finite differences: what every hand-written backward here is checked against
(tests/ and the exercises' checks). Use float64."""
import numpy as np

STEP = 1e-6       # float64 central differences are accurate to ~STEP^2 + eps/STEP


class NumericalGrad(np.ndarray):
    """A finite-difference gradient that knows its own rounding noise (`.noise`, absolute)."""
    noise = 0.0


def finite_differences(f, x, dout, step=STEP):
    """d/dx of sum(f(x) * dout) by central differences, one entry of x at a time (x is
    perturbed in place and restored). -> NumericalGrad shaped like x, whose .noise is the
    rounding error of (F(x+h) - F(x-h)) / 2h: a few ulps of the summed |f * dout|, over h."""
    grad = np.zeros_like(x)
    magnitude = 0.0
    for index in np.ndindex(x.shape):
        kept = x[index]
        x[index] = kept + step
        terms = f(x) * dout
        up = np.sum(terms)
        magnitude = max(magnitude, float(np.sum(np.abs(terms))))
        x[index] = kept - step
        down = np.sum(f(x) * dout)
        x[index] = kept
        grad[index] = (up - down) / (2 * step)
    result = grad.view(NumericalGrad)
    result.noise = 2 * np.finfo(np.float64).eps * magnitude / step
    return result
