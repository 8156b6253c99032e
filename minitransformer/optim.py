"""AdamW (decoupled weight decay, bias correction), learning-rate schedules, and global-norm
gradient clipping. Optimizer state is keyed like the parameters."""
import math

import numpy as np

from .backend import array_module


def learning_rate(step, base_lr, warmup_steps=0, total_steps=None, schedule="constant",
                  min_lr_ratio=0.1):
    """Linear warmup over warmup_steps, then constant, or cosine decay to min_lr_ratio*base_lr
    at total_steps. step counts from 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"schedule: {schedule!r} is not one of 'constant', 'cosine'")
    if total_steps is None:
        raise ValueError("schedule: 'cosine' needs total_steps")
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def global_norm(grads):
    """sqrt of the sum of squares of every gradient entry, in float64 -> a 0-d array on the
    grads' device: reading it (float()) is the only host sync."""
    grads = list(grads.values())
    xp = array_module(*grads)
    if not grads:
        return xp.zeros((), "float64")
    squares = xp.stack([xp.square(g, dtype=np.float64).sum() for g in grads])   # (n_params,)
    # the sum in order, as a Python sum adds (NumPy's cumsum runs in order; its sum is pairwise)
    return xp.sqrt(xp.cumsum(squares)[-1])


def clip_grad_norm(grads, max_norm):
    """Scale all grads in place so their global norm is at most max_norm -> the norm before,
    a 0-d float64 array on the grads' device. The scale is computed and applied there too
    (1 where no clipping is needed), so clipping costs no host sync."""
    norm = global_norm(grads)
    if max_norm is not None and grads:
        xp = array_module(norm)
        scale = xp.where(norm > max_norm, max_norm / (norm + 1e-6), 1.0)
        scales = {}   # scale in each grad's dtype: rounded once, as a Python float scale was
        for g in grads.values():
            if g.dtype not in scales:
                scales[g.dtype] = scale.astype(g.dtype)
            g *= scales[g.dtype]
    return norm


class AdamW:
    """AdamW (Loshchilov & Hutter): m, v moments with bias correction; weight decay applied to
    the parameter directly (decoupled), only to matrices (ndim >= 2), as nanoGPT does.

    state: {"step": int, "m.<param name>": array, "v.<param name>": array}."""

    def __init__(self, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0):
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        self.state = {"step": 0}
        self._scratch = None   # two flat work buffers: a step allocates nothing after the first

    def step(self, params, grads, lr):
        """Update params in place from grads (keys absent from grads are left alone, e.g. a
        frozen W_pos). Every operation writes into an existing array (out=, in place)."""
        self.state["step"] += 1
        t = self.state["step"]
        correction1, correction2 = 1 - self.beta1 ** t, 1 - self.beta2 ** t
        for name, g in grads.items():
            p = params[name]
            xp = array_module(p)
            m, v = self._moment("m." + name, p), self._moment("v." + name, p)
            a, b = self._work(p, grads)
            # m <- beta1 m + (1 - beta1) g
            m *= self.beta1
            m += xp.multiply(g, 1 - self.beta1, out=a)
            # v <- beta2 v + (1 - beta2) g^2
            v *= self.beta2
            xp.multiply(g, g, out=a)
            v += xp.multiply(a, 1 - self.beta2, out=a)
            if self.weight_decay and p.ndim >= 2:
                p *= 1 - lr * self.weight_decay
            # p <- p - (lr / correction1) m / (sqrt(v / correction2) + eps)
            xp.sqrt(xp.divide(v, correction2, out=a), out=a)
            a += self.eps
            p -= xp.divide(xp.multiply(m, lr / correction1, out=b), a, out=b)

    def _moment(self, key, p):
        """The moment `key` of parameter p: zeros at its first step."""
        if key not in self.state:
            self.state[key] = array_module(p).zeros_like(p)
        return self.state[key]

    def _work(self, p, grads):
        """Two work arrays of p's shape: views into two flat buffers, each as large as the
        largest gradient, kept from step to step."""
        xp, scratch = array_module(p), self._scratch
        if (scratch is None or scratch[0].size < p.size or array_module(scratch[0]) is not xp
                or scratch[0].dtype != p.dtype):
            size = max(g.size for g in grads.values())
            scratch = self._scratch = [xp.empty(size, dtype=p.dtype) for _ in range(2)]
        return [s[:p.size].reshape(p.shape) for s in scratch]
