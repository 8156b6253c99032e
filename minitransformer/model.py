"""The model: a decoder-only transformer whose forward calls the ops in order and whose
backward calls their backwards in exact reverse order. No autograd.

B batch, T positions, D d_model, H heads, E d_head, V d_vocab.
"""
from collections import namedtuple

import numpy as np

from . import ops
from .backend import array_module, resolve_device, to_floats, to_numpy
from .config import ModelConfig
from .hooks import HookPoints
from .interventions import HeadScale, engine_hooks, hook_list
from .params import check_params, init_params
from .cpu import resolve_threads, sharded

ATTENTION_HOOKS = ("hook_v", "hook_q", "hook_k", "hook_attn_scores", "hook_pattern", "hook_z",
                   "hook_result")   # in the order attention_forward reaches them
BlockCache = namedtuple("BlockCache", "ln1 attn ln2 mlp")
ForwardCache = namedtuple("ForwardCache", "tokens embed blocks ln_final unembed replaced")


class Model:
    """Model(config, params=None, seed=0, device="cpu", dtype=np.float32, smear=None).

    config: a ModelConfig or a dict of its fields. params: {TransformerLens name: array};
    None initialises from numpy.random.default_rng(seed) on the host, then moves to the
    device, so a seed gives the same model on NumPy and CuPy.
    device: "cpu", "gpu" (CuPy; an error if it cannot run here) or "auto" (CuPy if it can,
    else NumPy). dtype: float32 to train, float64 for gradient checks.
    smear: the smeared key's op pair (forward, backward); None: ops.smear_forward and
    ops.smear_backward (exercise 13 trains with a student's).

    forward, run_with_cache, per_token_loss and loss_and_grads take hooks={name: fn or
    [fn, ...]}, TransformerLens-style: at each hook point of hook_names(), fn(activation,
    name) sees the activation (read-only on NumPy) and returns None to keep it or a
    replacement of the same shape, which the rest of the forward uses. Ablations and replays
    are hooks too (minitransformer.interventions: ablate_heads, scale_heads, replay), and
    the only replacements loss_and_grads accepts: it has their gradients, not a hook's.
    """

    def __init__(self, config, params=None, seed=0, device="cpu", dtype=np.float32, smear=None):
        self.config = ModelConfig.from_dict(config)
        self.smear = (ops.smear_forward, ops.smear_backward) if smear is None else tuple(smear)
        self.xp = resolve_device(device)
        self.dtype = np.dtype(dtype)
        host = init_params(self.config, seed, self.dtype) if params is None else params
        check_params(self.config, host)
        self.params = {k: self.xp.asarray(to_numpy(v), dtype=self.dtype) for k, v in host.items()}

    # ---- public API -----------------------------------------------------------------------

    def forward(self, tokens, hooks=None, start_at_layer=None, resid_pre=None):
        """tokens (B,T) or (T,) int -> logits (B,T,V) as a NumPy array. hooks: see the class;
        start_at_layer, resid_pre: as per_token_loss's. No backward follows, so no cache is
        kept (forward_train's logits, to the bit)."""
        return to_numpy(self._forward(self.tokens(tokens), hooks, start_at_layer=start_at_layer,
                                      resid_pre=resid_pre, keep_cache=False)[0])

    def run_with_cache(self, tokens, hooks=None):
        """-> (logits (B,T,V), cache): a dict of NumPy arrays named by TransformerLens hook:
        hook_embed, hook_pos_embed, blocks.{l}.hook_resid_pre|hook_attn_out|hook_resid_mid|
        hook_mlp_out|hook_resid_post, blocks.{l}.attn.hook_q|hook_k|hook_v|hook_z (B,T,H,E),
        hook_attn_scores|hook_pattern (B,H,T,T), hook_result (B,T,H,D) (each head's output,
        b_O excluded), blocks.{l}.mlp.hook_pre|hook_post, and with LayerNorm
        blocks.{l}.ln1|ln2.hook_scale (B,T,1)|hook_normalized (B,T,D), ln_final.hook_scale|
        hook_normalized (before w and b, as TransformerLens's): the activations as they
        flowed on, after any hook's replacement."""
        acts = {}
        logits, _ = self.forward_train(tokens, hooks, record=acts)
        return to_numpy(logits), {k: to_numpy(v) for k, v in acts.items()}

    def per_token_loss(self, tokens, hooks=None, start_at_layer=None, resid_pre=None):
        """-> (B,T-1) NumPy: the loss of predicting tokens[:,1:] from each position.
        hooks: as forward's. start_at_layer, resid_pre (B,T,D): run only layers
        start_at_layer.. (TransformerLens's start_at_layer), from resid_pre, the residual
        stream entering that layer (its blocks.{l}.hook_resid_pre); the same numbers as the
        whole forward in which that activation was resid_pre (hooks below it are not
        reached). An ablation of heads in layer l and up reuses the layers below this way.
        No backward follows, so no cache is kept: the numbers of per_token_cross_entropy of
        forward_train's logits, to the bit (tests/test_lean_forward.py), with less memory
        traffic: no stored attention pattern, the MLP one sequence at a time, each layer's
        activations freed as the next is made (docs/backends-and-speed.md: how much faster)."""
        tokens = self.tokens(tokens)
        logits, _ = self._forward(tokens, hooks, start_at_layer=start_at_layer,
                                  resid_pre=resid_pre, keep_cache=False)
        return to_numpy(ops.per_token_cross_entropy(logits, tokens))

    def loss_and_grads(self, tokens, hooks=None, device_loss=False, threads=1):
        """Next-token loss averaged over the B*(T-1) predictions -> (loss float, grads dict
        keyed like params, arrays on the model's device). device_loss: the loss as a 0-d
        array on the device instead, so that nothing waits for the device (the training
        loop reads it later). hooks: may read activations; the interventions'
        (minitransformer.interventions) are the only replacements allowed (a ValueError for
        another: the backward does not run through an arbitrary function).
        threads: on NumPy, split the batch across this many threads (0: every core), the
        same loss and gradients up to float rounding (minitransformer.cpu); for the
        plain loss only, and a GPU never splits it."""
        tokens = self.tokens(tokens)
        B, T = tokens.shape
        if B == 0 or T < 2:
            raise ValueError(f"tokens: shape {(B, T)}; a loss needs at least one sequence of at "
                             f"least 2 tokens (each predicts the next)")
        if threads != 1 and self.xp is np:
            if hooks:
                raise ValueError(f"threads={threads}: splits the plain loss only; with hooks "
                                 f"use threads=1")
            shards = resolve_threads(threads, B)
            if shards > 1:
                return sharded(lambda part: self._loss_and_grads(part, device_loss), tokens,
                               shards)
        return self._loss_and_grads(tokens, device_loss, hooks)

    def _loss_and_grads(self, tokens, device_loss, hooks=None):
        logits, cache = self._forward(tokens, hooks)
        loss, loss_cache = ops.cross_entropy_forward(logits, cache.tokens)
        grads = self.backward(ops.cross_entropy_backward(1.0, loss_cache), cache)
        return (loss if device_loss else float(loss)), grads

    # ---- forward and backward -------------------------------------------------------------

    def tokens(self, tokens):
        """Validate and move tokens: int (B,T) or (T,), 0 <= id < d_vocab, T <= n_ctx. Tokens
        already on the model's GPU stay there; their range check costs one host sync."""
        xp = self.xp
        on_device = xp is not np and array_module(tokens) is xp
        ids = tokens if on_device else np.asarray(to_numpy(tokens))
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"tokens: expected an integer array [batch, pos], got "
                             f"dtype {ids.dtype} shape {ids.shape}")
        if ids.shape[1] > self.config.n_ctx:
            raise ValueError(f"tokens: {ids.shape[1]} positions exceed n_ctx={self.config.n_ctx}")
        if ids.size:
            low, high = to_floats(ids.min(), ids.max()) if on_device else (ids.min(), ids.max())
            if low < 0 or high >= self.config.d_vocab:
                raise ValueError(f"tokens: ids must lie in [0, {self.config.d_vocab}), got "
                                 f"[{low:.0f}, {high:.0f}]")
        return xp.asarray(ids, dtype=np.int64)

    def forward_train(self, tokens, hooks=None, record=None):
        """-> (logits (B,T,V) on the device, ForwardCache for backward). Every activation
        passes through its hook point: `hooks` may read or replace it, `record`, a dict, is
        filled with what flows on, under TransformerLens hook names."""
        return self._forward(self.tokens(tokens), hooks, record)

    def _forward(self, tokens, hooks=None, record=None, start_at_layer=None, resid_pre=None,
                 keep_cache=True):
        """forward_train of tokens already validated and on the device (Model.tokens).
        start_at_layer, resid_pre: per_token_loss's. keep_cache=False: no backward follows;
        the cache holds no blocks, so each layer's activations are freed as the next one is
        made, and the ops take their cache-less paths (the same numbers)."""
        cfg, p, xp = self.config, self.params, self.xp
        T = tokens.shape[1]
        hook = HookPoints(self._checked_hooks(hooks, tokens.shape), record)
        first, resid = self._start(start_at_layer, resid_pre, tokens)
        embed_cache = None
        if resid is None:
            resid, embed_cache = ops.embed_forward(tokens, p["embed.W_E"])   # (B,T,D)
            resid = hook("hook_embed", resid)
        pos = None
        if "pos_embed.W_pos" in p:   # a view: W_pos[:T] for every batch row, as TransformerLens
            pos = hook("hook_pos_embed", xp.broadcast_to(p["pos_embed.W_pos"][:T], resid.shape))
        if cfg.positional_embedding_type == "standard" and embed_cache is not None:
            resid = resid + pos
        blocks = []
        for l in range(first, cfg.n_layers):
            b = f"blocks.{l}."
            resid = hook(b + "hook_resid_pre", resid)
            x, ln1 = self._ln(resid, b + "ln1", hook)
            qk_in = x + pos if cfg.positional_embedding_type == "shortformer" else x
            attn_out, attn = ops.attention_forward(
                qk_in, x, *(p[b + "attn." + n] for n in
                            ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O")),
                alpha=p.get(b + "attn.alpha"), hook=hook.scope(b + "attn."),
                smear_forward=self.smear[0], keep_pattern=keep_cache)
            resid = resid + hook(b + "hook_attn_out", attn_out)
            ln2 = mlp = None
            if not cfg.attn_only:
                resid = hook(b + "hook_resid_mid", resid)
                x2, ln2 = self._ln(resid, b + "ln2", hook)
                mlp_out, mlp = self._mlp(x2, b + "mlp.", hook, keep_cache)
                resid = resid + hook(b + "hook_mlp_out", mlp_out)
            resid = hook(b + "hook_resid_post", resid)
            if keep_cache:
                blocks.append(BlockCache(ln1, attn, ln2, mlp))
        x, ln_final = self._ln(resid, "ln_final", hook)
        logits, unembed = ops.linear_forward(x, p["unembed.W_U"], p["unembed.b_U"])  # (B,T,V)
        return logits, ForwardCache(tokens, embed_cache, blocks, ln_final, unembed,
                                    tuple(hook.replaced))

    def backward(self, dlogits, cache):
        """dlogits (B,T,V) -> grads {param name: array}, the forward's ops in reverse order.
        A forward in which a hook replaced an activation is refused: the backward does not
        run through hooks, so its gradients would be of another function."""
        if cache.replaced:
            raise ValueError(f"backward: the hooks at {', '.join(cache.replaced)} replaced "
                             f"activations, and the backward does not run through hooks; only "
                             f"hooks that return None (read-only) and the interventions' "
                             f"(minitransformer.interventions) are allowed with gradients")
        cfg, p = self.config, self.params
        grads = {}
        dx, grads["unembed.W_U"], grads["unembed.b_U"] = ops.linear_backward(dlogits, cache.unembed)
        dresid = self._ln_backward(dx, cache.ln_final, "ln_final", grads)   # (B,T,D)
        dpos = 0.0
        for l in reversed(range(cfg.n_layers)):
            b, blk = f"blocks.{l}.", cache.blocks[l]
            if not cfg.attn_only:
                dx2, *mlp_grads = ops.mlp_backward(dresid, blk.mlp)
                grads.update(zip((b + "mlp.W_in", b + "mlp.b_in", b + "mlp.W_out",
                                  b + "mlp.b_out"), mlp_grads))
                dresid = dresid + self._ln_backward(dx2, blk.ln2, b + "ln2", grads)
            dqk_in, dx, attn_grads = ops.attention_backward(dresid, blk.attn,
                                                            smear_backward=self.smear[1])
            for name, g in attn_grads.items():
                grads[b + "attn." + name] = g
            if dqk_in is not None:   # None: a replay, the queries and keys were never made
                dx = dx + dqk_in   # shortformer: qk_in = x + pos, so x gets the query/key grads too
                if cfg.positional_embedding_type == "shortformer":
                    dpos = dpos + dqk_in.sum(0)
            dresid = dresid + self._ln_backward(dx, blk.ln1, b + "ln1", grads)
        grads["embed.W_E"] = ops.embed_backward(dresid, cache.embed)
        if "pos_embed.W_pos" in p:
            if cfg.positional_embedding_type == "standard":
                dpos = dresid.sum(0)
            dW_pos = self.xp.zeros_like(p["pos_embed.W_pos"])
            dW_pos[: cache.tokens.shape[1]] = dpos
            grads["pos_embed.W_pos"] = dW_pos
        return {k: grads[k] for k in p}   # the params' order

    def hook_names(self):
        """Every hook point of this model (TransformerLens names), in the order the forward
        reaches them."""
        cfg = self.config
        ln = cfg.normalization_type == "LN"

        def norm(name):   # TransformerLens's LayerNorm hook points, where there is a LayerNorm
            return [name + ".hook_scale", name + ".hook_normalized"] if ln else []

        names = ["hook_embed"] + (["hook_pos_embed"] if "pos_embed.W_pos" in self.params else [])
        for l in range(cfg.n_layers):
            b = f"blocks.{l}."
            names += [b + "hook_resid_pre"] + norm(b + "ln1")
            names += [b + "attn." + n for n in ATTENTION_HOOKS] + [b + "hook_attn_out"]
            if not cfg.attn_only:
                names += [b + "hook_resid_mid"] + norm(b + "ln2")
                names += [b + "mlp.hook_pre", b + "mlp.hook_post", b + "hook_mlp_out"]
            names += [b + "hook_resid_post"]
        return names + norm("ln_final")

    # ---- helpers --------------------------------------------------------------------------

    def _checked_hooks(self, hooks, token_shape):
        """hooks {name: fn or [fn, ...]} (or (name, fn) pairs) -> a dict; a one-line error for
        a name that is not a hook point, one never reached (queries, keys and scores of a
        layer whose pattern is replayed, and its values and pattern too where z is), an fn
        that is not callable, or an intervention misplaced or of the wrong shape."""
        hooks = dict(hooks or {})
        names = set(self.hook_names()) if hooks else set()
        cfg = self.config
        B, T = token_shape
        shapes = {"hook_pattern": (B, cfg.n_heads, T, T), "hook_z": (B, T, cfg.n_heads, cfg.d_head)}
        replayed = {}   # layer prefix -> "hook_pattern" or "hook_z"
        for name, fns in hooks.items():
            if name not in names:
                raise ValueError(f"hooks: {name!r} is not a hook point of this model "
                                 f"({cfg.n_layers} layers{', attention-only' if cfg.attn_only else ''}"
                                 f"); Model.hook_names() lists them")
            fns = hook_list(fns)
            for fn in fns:
                if not callable(fn):
                    raise ValueError(f"hooks: {name}: {fn!r} is not a function fn(activation, name)")
                if isinstance(fn, HeadScale):
                    self._check_head_scale(fn, name, B)
            layer, _, point = name.rpartition(".attn.")
            if point in shapes:
                value, _ = engine_hooks(fns, name)
                if value is not None:
                    if tuple(value.shape) != shapes[point]:
                        raise ValueError(f"hooks: {name}: the replayed activation has shape "
                                         f"{tuple(value.shape)}, expected {shapes[point]} for "
                                         f"these tokens")
                    if replayed.get(layer) != "hook_z":
                        replayed[layer] = point
        unreached = {"hook_pattern": ("hook_q", "hook_k", "hook_attn_scores"),
                     "hook_z": ("hook_v", "hook_q", "hook_k", "hook_attn_scores", "hook_pattern")}
        for name in hooks:
            layer, _, point = name.rpartition(".attn.")
            if layer in replayed and point in unreached[replayed[layer]]:
                raise ValueError(f"hooks: {name} is never reached: that layer's "
                                 f"{replayed[layer]} is replayed, so it makes no "
                                 f"{', '.join(unreached[replayed[layer]])}")
        return hooks

    def _check_head_scale(self, scale, name, batch):
        """One-line errors for a HeadScale off a hook_z, of a head that does not exist, or of
        factors of another shape than (H,) or (B,H)."""
        H = self.config.n_heads
        if not name.endswith(".attn.hook_z"):
            raise ValueError(f"hooks: {name}: a head scale acts on a layer's hook_z")
        bad = [h for h in scale.zero if not 0 <= h < H]
        if bad:
            raise ValueError(f"hooks: {name}: head {bad[0]} does not exist in a layer of {H} heads")
        if scale.scale is not None and np.shape(scale.scale) not in ((H,), (batch, H)):
            raise ValueError(f"hooks: {name}: head scale of shape {np.shape(scale.scale)}, "
                             f"expected ({H},) or ({batch}, {H})")

    def _start(self, start_at_layer, resid_pre, tokens):
        """-> (first layer to run, the residual stream entering it on the device, or None:
        the embedding's); one-line errors for a layer out of range or a resid_pre missing or
        of the wrong shape."""
        cfg = self.config
        if start_at_layer is None:
            if resid_pre is not None:
                raise ValueError("resid_pre: given without start_at_layer, the layer it enters")
            return 0, None
        if isinstance(start_at_layer, bool) or not isinstance(start_at_layer, (int, np.integer)) \
                or not 0 <= start_at_layer <= cfg.n_layers:
            raise ValueError(f"start_at_layer: {start_at_layer!r} is not a layer 0..{cfg.n_layers} "
                             f"of this model")
        expected = tuple(tokens.shape) + (cfg.d_model,)
        if resid_pre is None or tuple(resid_pre.shape) != expected:
            got = "none" if resid_pre is None else f"shape {tuple(resid_pre.shape)}"
            raise ValueError(f"resid_pre: start_at_layer={start_at_layer} needs the residual stream "
                             f"entering that layer, shape {expected} for these tokens; got {got}")
        return int(start_at_layer), self.xp.asarray(resid_pre, dtype=self.dtype)

    def _mlp(self, x, name, hook, keep_cache):
        """The MLP block `name` ("blocks.{l}.mlp.") on x (B,T,D) -> (out, cache or None): one
        sequence at a time where no cache is kept, no hook reads inside it and NumPy runs it
        (the same numbers, less memory traffic; on a GPU it would only add launches)."""
        p, hook = self.params, hook.scope(name)
        weights = [p[name + n] for n in ("W_in", "b_in", "W_out", "b_out")]
        if keep_cache or self.xp is not np or hook.wants("hook_pre") or hook.wants("hook_post"):
            return ops.mlp_forward(x, *weights, self.config.act_fn, hook=hook)
        return ops.mlp_forward_by_sequence(x, *weights, self.config.act_fn), None

    def _ln(self, x, name, hook):
        if self.config.normalization_type != "LN":
            return x, None
        return ops.layernorm_forward(x, self.params[name + ".w"], self.params[name + ".b"],
                                     hook=hook.scope(name + "."))

    def _ln_backward(self, dout, ln_cache, name, grads):
        if ln_cache is None:
            return dout
        dx, grads[name + ".w"], grads[name + ".b"] = ops.layernorm_backward(dout, ln_cache)
        return dx
