"""Exercise 14: hooks that record and ablate, and the paper's ablation built from them.

Paper: method "(2) Per-token losses (attention head ablations)" and Argument 3: to see what
a head does, knock it out at test time and watch the loss. The paper's Model Analysis Table
uses pattern-preserving ablations: the head's output is removed, but every attention
pattern is kept as it was in the clean run, so later heads still look where they looked
and only their values miss the head. Interpretability code does this with hooks, as
TransformerLens does: functions the forward pass calls at named points, which read an
activation or hand back a replacement. Here you write those hooks yourself and check them
against the engine.

A hook is fn(activation, name): the forward calls it at hook point `name` (a name of
model.hook_names()) with the activation there, read-only. It returns None to leave the
activation alone, or a replacement of the same shape, which the rest of the forward uses:

    model.forward(tokens, hooks={"blocks.1.attn.hook_z": fn})        # one hook
    model.forward(tokens, hooks={name: [fn, other]})                   # two, in order

What to write:
  1. record_hooks(names, store): hooks that keep the activation of each hook point in
     `names` in store[name] and change nothing. With every name of model.hook_names(),
     store ends up holding what model.run_with_cache(tokens) returns as its cache.
  2. zero_head_hook(head): a hook for blocks.{l}.attn.hook_z, the heads' outputs z before
     W_O, (B,T,H,E), that returns z with head `head`'s output zeroed and every other entry
     as it was. z is read-only: change a copy. With it, model.forward gives what
     model.forward(tokens, hooks=ablate_heads([(l, head)])) gives, to the bit: the
     engine's full ablation (every later pattern recomputed).
  3. pattern_preserving_hooks(cache, layer, head, n_layers): the hooks of the paper's
     pattern-preserving ablation of head `layer`.`head`, from functions of your own (not
     minitransformer.interventions' replay or ablate_heads): at each layer's hook_pattern
     (B,H,T,T) a hook that returns the pattern the clean run recorded in `cache` (a
     run_with_cache cache of the same tokens), and zero_head_hook(head) at the ablated
     layer's hook_z. It must give what the engine gives for
     combine(replay(cache, patterns), ablate_heads([(layer, head)])).

Shapes: B batch, T positions, H heads, E d_head. record_hooks -> {name: fn};
        zero_head_hook -> fn(z (B,T,H,E), name) -> (B,T,H,E);
        pattern_preserving_hooks -> {hook name: fn or [fn, ...]}.

The run ends with the result the hooks are for: on the trained 2-layer model, how much
each head's removal raises the loss on the second copy of repeated random tokens, full
against pattern-preserving. A previous-token head matters only through the pattern it
builds for the induction head, so its pattern-preserving ablation does little.

Run: python -m exercises.ex14_hooks    Check: make exercise N=14
Hints, one step at a time: python -m exercises.hint 14 (then --step 2)
"""
import numpy as np

from circuits import repeated_random_tokens
from exercises import common
from minitransformer.interventions import ablate_heads, combine, replay


def record_hooks(names, store):
    """-> {name: fn} for every name in `names`: each hook keeps its activation in store[name]
    and returns None (it changes nothing)."""
    # BEGIN SOLUTION: one function that stores what it sees under its name, at every name
    # Hint 1: a hook is called as fn(activation, name), so one function can serve every
    #   hook point: it is told which one calls it. And what must it return for the forward
    #   to go on unchanged?
    # Hint 2: inside the function, put the activation into store under the name it is
    #   given (not a loop variable's: the loop has ended by the time the hooks run) and
    #   return nothing; then map every name in names to that one function.
    # Hint 3: `def keep(activation, name): store[name] = activation` and then
    #   `return {name: keep for name in names}`.
    def keep(activation, name):
        store[name] = activation
    return {name: keep for name in names}
    # END SOLUTION


def zero_head_hook(head):
    """-> fn(z, name) for a blocks.{l}.attn.hook_z: z (B,T,H,E) -> a copy with head `head`'s
    output zeroed."""
    # BEGIN SOLUTION: a function of (z, name) that returns a copy of z with one head zeroed
    # Hint 1: z is (B,T,H,E): which axis is the head? It is read-only, and the forward
    #   computes with what the hook returns (None means "keep z as it was").
    # Hint 2: define a function of (z, name) inside this one: copy z, set every entry of
    #   the head (its index on axis 2) to zero, return the copy. Return that function.
    # Hint 3: `def zero(z, name): z = z.copy(); z[:, :, head] = 0.0; return z`, then
    #   `return zero`.
    def zero(z, name):
        z = z.copy()
        z[:, :, head] = 0.0
        return z
    return zero
    # END SOLUTION


def pattern_preserving_hooks(cache, layer, head, n_layers):
    """cache: run_with_cache's of the same tokens -> hooks that put back every layer's
    recorded attention pattern and zero head `layer`.`head`'s output."""
    # BEGIN SOLUTION: a pattern-replaying hook at every layer, zero_head_hook at the ablated one
    # Hint 1: two kinds of hook point: the pattern of each layer, and the heads' outputs of
    #   the ablated layer. You wrote the one for the second already.
    # Hint 2: a hook that returns the cache's entry for the name it is called with puts
    #   that layer's recorded pattern back; use it at blocks.{l}.attn.hook_pattern for
    #   every layer l, and zero_head_hook(head) at the ablated layer's hook_z.
    # Hint 3: `def put_back(pattern, name): return cache[name]`, then
    #   `hooks = {f"blocks.{l}.attn.hook_pattern": put_back for l in range(n_layers)}` and
    #   `hooks[f"blocks.{layer}.attn.hook_z"] = zero_head_hook(head)`.
    def put_back(pattern, name):
        return cache[name]
    hooks = {f"blocks.{l}.attn.hook_pattern": put_back for l in range(n_layers)}
    hooks[f"blocks.{layer}.attn.hook_z"] = zero_head_hook(head)
    return hooks
    # END SOLUTION


def compare(what, yours, engines):
    """Print whether yours equals the engine's (to the bit, or within float rounding) or is
    WRONG, and return True if it is right."""
    yours, engines = np.asarray(yours), np.asarray(engines)
    if yours.shape != engines.shape:
        print(f"WRONG: {what}: shape {yours.shape}, the engine's {engines.shape}")
        return False
    gap = float(np.abs(yours.astype(np.float64) - engines).max()) if yours.size else 0.0
    if np.array_equal(yours, engines):
        print(f"ok     {what}: the engine's, to the bit")
    elif gap <= 1e-4 * max(1.0, float(np.abs(engines).max())):
        print(f"ok     {what}: the engine's within float rounding (max difference {gap:.1e})")
    else:
        print(f"WRONG: {what}: differs from the engine's by up to {gap:.3g}")
        return False
    return True


def loss_changes(model, tokens, scored):
    """-> (full, preserving, engine_full, engine_preserving), each (n_layers, n_heads): the
    mean loss at the `scored` columns of per_token_loss with each head ablated, minus the
    clean one; yours (zero_head_hook, pattern_preserving_hooks) and the engine's."""
    cfg = model.config
    clean = model.per_token_loss(tokens)[:, scored].mean()
    _, cache = model.run_with_cache(tokens)
    patterns = [f"blocks.{l}.attn.hook_pattern" for l in range(cfg.n_layers)]
    changes = np.zeros((4, cfg.n_layers, cfg.n_heads))
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            runs = [{f"blocks.{layer}.attn.hook_z": zero_head_hook(head)},
                    pattern_preserving_hooks(cache, layer, head, cfg.n_layers),
                    ablate_heads([(layer, head)]),
                    combine(replay(cache, patterns), ablate_heads([(layer, head)]))]
            for i, hooks in enumerate(runs):
                changes[i, layer, head] = (model.per_token_loss(tokens, hooks=hooks)[:, scored]
                                           .mean() - clean)
    return tuple(changes)


if __name__ == "__main__":
    plt = common.pyplot()
    run = common.trained_run()
    model = run.model()
    cfg = model.config
    length = 25
    tokens = repeated_random_tokens(20, length, 2, run.token_counts, seed=0)   # (20, 51)

    print("1. record_hooks against run_with_cache, every hook point:")
    _, cache = model.run_with_cache(tokens)
    store = {}
    model.forward(tokens, hooks=record_hooks(model.hook_names(), store))
    missing, extra = sorted(set(cache) - set(store)), sorted(set(store) - set(cache))
    differ = [name for name in set(cache) & set(store)
              if not np.array_equal(store[name], cache[name])]
    if missing or extra or differ:
        print(f"WRONG: of {len(cache)} hook points, store misses {missing[:3]}, has extra "
              f"{extra[:3]}, and holds other values than the cache at {differ[:3]}")
    else:
        print(f"ok     store holds all {len(cache)} activations run_with_cache records, "
              f"to the bit")

    print("\n2. zero_head_hook against ablate_heads, every head:")
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            compare(f"logits without head {layer}.{head}",
                    model.forward(tokens, hooks={f"blocks.{layer}.attn.hook_z":
                                                 zero_head_hook(head)}),
                    model.forward(tokens, hooks=ablate_heads([(layer, head)])))

    print("\n3. pattern_preserving_hooks against combine(replay(...), ablate_heads(...)):")
    scored = slice(length + 1, None)         # second copy, from its second token: induction
    full, preserving, engine_full, engine_preserving = loss_changes(model, tokens, scored)
    compare("loss changes, full ablation", full, engine_full)
    compare("loss changes, pattern-preserving ablation", preserving, engine_preserving)

    print(f"\nloss on the second copy of {length} random tokens "
          f"(clean {model.per_token_loss(tokens)[:, scored].mean():.2f} nats), "
          f"change when a head is ablated:")
    names = [f"{l}.{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    for name, f, p in zip(names, full.ravel(), preserving.ravel()):
        print(f"head {name}: full {f:+.2f} nats   pattern-preserving {p:+.2f} nats")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, full.ravel(), 0.4, label="full ablation")
    ax.bar(x + 0.2, preserving.ravel(), 0.4, label="pattern-preserving")
    ax.set_xticks(x, [f"head {n}" for n in names])
    ax.axhline(0, color="k", lw=0.5)
    ax.set(ylabel="loss change on the repeat (nats)",
           title="removing each head, built from your hooks")
    ax.legend()
    common.save(fig, "ex14_hooks")
