"""TransformerLens 3.x interop: a run's weights as a safetensors file that TransformerLens builds
the model from, and TransformerLens-format weights loaded into our Model.

    python -m minitransformer.export runs/attn-only-2l --out attn-only-2l.safetensors [--step N]

The file holds every parameter under its TransformerLens state-dict name and shape (ours already
are), the two constant buffers TransformerLens 3.9's attention keeps in its state dict
(blocks.{l}.attn.mask, an empty bool array, and blocks.{l}.attn.IGNORE, -inf) so that a strict
load_state_dict works, and the HookedTransformerConfig keyword arguments as JSON in the file's
metadata under "config". In TransformerLens 3.x:

    cfg = HookedTransformerConfig(**json.loads(safe_open(path, "pt").metadata()["config"]))
    model = HookedTransformer(cfg)
    model.load_state_dict(safetensors.torch.load_file(path))

No pickle is ever loaded: safetensors is plain tensors and a JSON header; a .pt file is read
only through torch.load(weights_only=True), which refuses anything but tensors.
"""
import argparse
import json
import math
import pathlib
import re
import sys

import numpy as np

from .backend import to_numpy
from .config import ACT_FNS, ModelConfig, positive_int, shown
from .io import atomic_write, error, output_file
from .model import Model
from .npz import one_line, parse_json
from .ops.layernorm import EPS as LAYERNORM_EPS
from .params import check_params, param_shapes
from .runs import Run

SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
CONFIG_KEY = "config"                                    # the metadata key TransformerLens reads
BUFFER = re.compile(r"blocks\.(\d+)\.attn\.(mask|IGNORE)")  # TransformerLens's, not weights

# HookedTransformerConfig's fields (TransformerLens 3.9) and what each means to this engine.
REQUIRED = ("n_layers", "d_model", "d_head", "n_ctx")
# the same field in both; where ours has another default (attn_only, act_fn, positions), a dict
# of keyword arguments means TransformerLens's
TL_DEFAULTS = {"n_heads": -1, "d_vocab": -1, "attn_only": False, "d_mlp": None, "act_fn": "relu",
               "normalization_type": "LN", "positional_embedding_type": "standard",
               "initializer_range": -1.0}
SAME_NAME = REQUIRED + tuple(TL_DEFAULTS)
# Fields that change the forward pass: only TransformerLens's default is what this engine computes.
FORWARD_DEFAULTS = {
    "eps": LAYERNORM_EPS, "use_attn_scale": True, "attention_dir": "causal",
    "n_key_value_heads": None, "gated_mlp": False, "uses_rms_norm": False,
    "layer_norm_folding": False, "final_rms": False, "num_experts": None,
    "experts_per_token": None, "use_qk_norm": False, "clip_qkv": None, "use_logn_attn": False,
    "use_dynamic_ntk_rope": False, "use_local_attn": False,
    "scale_attn_by_inverse_layer_idx": False, "parallel_attn_mlp": False, "rotary_dim": None,
    "post_embedding_ln": False, "tie_word_embeddings": False,
    "use_normalization_before_and_after": False, "attn_scores_soft_cap": -1.0,
    "output_logits_soft_cap": -1.0, "use_NTK_by_parts_rope": False, "use_yarn_rope": False,
    "use_attention_sinks": False, "relative_attention_max_distance": None,
    "relative_attention_num_buckets": None, "load_in_4bit": False, "quantization_method": None}
# Fields that leave the logits of a batch of tokens alone: names, devices, dtypes, tokenizers,
# initialisation, hooks, and the settings of features refused above (rotary, local attention).
IGNORED = frozenset("""
    device dtype model_name seed init_mode init_weights n_params n_devices use_attn_result
    use_split_qkv_input use_hook_mlp_in use_attn_in use_hook_tokens default_prepend_bos
    tokenizer_name tokenizer_prepends_bos trust_remote_code from_checkpoint checkpoint_index
    checkpoint_label_type checkpoint_value decoder_start_token_id train_seq_length window_size
    attn_types ungroup_grouped_query_attention norm_topk_prob rotary_base rotary_base_local
    rotary_scaling_factor rotary_adjacent_pairs NTK_by_parts_low_freq_factor
    NTK_by_parts_high_freq_factor NTK_by_parts_factor NTK_original_ctx_len yarn_factor
    yarn_attention_factor yarn_beta_fast yarn_beta_slow yarn_original_max_position_embeddings
    yarn_truncate yarn_global_attn_only""".split())
# original_architecture changes TransformerLens's forward for some names (post-norm, OLMo's QK norm)
ARCHITECTURES = (None, "GPT2LMHeadModel")


# ---- our config <-> HookedTransformerConfig --------------------------------------------------

def transformer_lens_config(config):
    """ModelConfig (or its dict) -> HookedTransformerConfig keyword arguments (JSON-able), or a
    one-line error naming what TransformerLens cannot express."""
    cfg = ModelConfig.from_dict(config)
    if cfg.smeared_key:
        raise ValueError("smeared_key: TransformerLens has no smeared key (our "
                         "blocks.{l}.attn.alpha, paper Argument 2), so this model cannot be "
                         "exported")
    if cfg.positional_embedding_type == "none":
        raise ValueError("positional_embedding_type: 'none' has no TransformerLens equivalent "
                         "(its models all have positions), so this model cannot be exported")
    kwargs = {name: getattr(cfg, name) for name in SAME_NAME}
    kwargs.update(d_vocab_out=cfg.d_vocab, eps=LAYERNORM_EPS, use_attn_scale=True,
                  default_prepend_bos=False, tokenizer_name=None)   # byte tokens, no BOS added
    return kwargs


def from_transformer_lens_config(kwargs):
    """HookedTransformerConfig keyword arguments (a dict, e.g. cfg.to_dict()) -> ModelConfig, or a
    one-line error naming the first field whose value this engine does not compute."""
    unknown = sorted(set(kwargs) - set(SAME_NAME) - set(FORWARD_DEFAULTS) - IGNORED -
                     {"d_vocab_out", "attn_scale", "original_architecture"}, key=str)
    if unknown:
        name = unknown[0] if str(unknown[0]).isidentifier() else shown(unknown[0])
        raise ValueError(f"{str(name)[:60]}: not a HookedTransformerConfig field "
                         f"(TransformerLens 3.9's); for this engine's own fields pass a ModelConfig")
    for name, default in FORWARD_DEFAULTS.items():
        if name in kwargs and kwargs[name] != default:
            raise ValueError(f"{name}: {shown(kwargs[name])} is not supported here (only "
                             f"TransformerLens's default {default!r})")
    if kwargs.get("original_architecture") not in ARCHITECTURES:
        raise ValueError(f"original_architecture: {shown(kwargs['original_architecture'])} is not "
                         f"supported here (only {ARCHITECTURES})")
    missing = [name for name in REQUIRED if name not in kwargs]
    if missing:
        raise ValueError(f"{missing[0]}: missing (HookedTransformerConfig requires it)")
    values = {**TL_DEFAULTS, **{name: kwargs[name] for name in SAME_NAME if name in kwargs}}
    if values["n_heads"] == -1:                         # TransformerLens infers it so
        for name in ("d_model", "d_head"):
            positive_int(name, values[name])
        values["n_heads"] = values["d_model"] // values["d_head"]
    if values["d_vocab"] == -1:
        raise ValueError("d_vocab: not given (TransformerLens infers it from a tokenizer); give it")
    if kwargs.get("d_vocab_out", -1) not in (-1, values["d_vocab"]):
        raise ValueError(f"d_vocab_out: {shown(kwargs['d_vocab_out'])} differs from d_vocab="
                         f"{values['d_vocab']}; this engine unembeds into the input vocabulary")
    if values["initializer_range"] == -1:
        values["initializer_range"] = None              # only the init; ours has the same default
    if values["attn_only"] and values["act_fn"] not in ACT_FNS:
        values["act_fn"] = ACT_FNS[0]                   # no MLP, so no activation to compute
    cfg = ModelConfig(**values)
    scale = kwargs.get("attn_scale", -1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not (
            scale == -1 or 0 < scale <= sys.float_info.max):
        raise ValueError(f"attn_scale: must be a positive number (or -1: sqrt(d_head)), got "
                         f"{shown(scale)}")
    if scale != -1.0 and not math.isclose(scale, math.sqrt(cfg.d_head), rel_tol=1e-6):
        raise ValueError(f"attn_scale: {scale} is not sqrt(d_head)={math.sqrt(cfg.d_head):g}, "
                         f"the only attention scale here")
    return cfg


# ---- export -----------------------------------------------------------------------------------

def to_transformer_lens(model):
    """Model -> (state_dict {TransformerLens name: float32 NumPy array, the buffers included},
    HookedTransformerConfig keyword arguments)."""
    kwargs = transformer_lens_config(model.config)
    state = {name: to_numpy(value).astype(np.float32) for name, value in model.params.items()}
    for layer in range(model.config.n_layers):
        state[f"blocks.{layer}.attn.mask"] = np.zeros((0, 0), dtype=bool)
        state[f"blocks.{layer}.attn.IGNORE"] = np.array(-np.inf, dtype=np.float32)
    return state, kwargs


def save_transformer_lens(model, out, source=None):
    """Write `model` to `out` (a .safetensors name, never a run's run.npz) atomically, the
    config in its metadata; `source` (JSON-able) is stored beside it as "minitransformer"."""
    out = output_file(out, "out", suffix=SUFFIX)
    state, kwargs = to_transformer_lens(model)
    metadata = {CONFIG_KEY: json.dumps(kwargs)}
    if source is not None:
        metadata["minitransformer"] = json.dumps(source)
    data = _safetensors("write").numpy.save(state, metadata=metadata)
    atomic_write(out, lambda f: f.write(data))
    return out


def export_run(run_or_path, out, step=None):
    """A run's latest weights (or snapshot `step`) -> `out`, a .safetensors file for
    TransformerLens 3.x. The config is checked before any weights are read. -> the path."""
    run = run_or_path if isinstance(run_or_path, Run) else Run(run_or_path)
    transformer_lens_config(run.config)
    model = run.model(step)
    if step is None:
        step, tokens = run.step, run.tokens
    else:
        step, tokens = int(step), run.tokens_at(int(step))
    return save_transformer_lens(model, out, {"run": str(run.path), "step": step, "tokens": tokens})


# ---- import -----------------------------------------------------------------------------------

def load_transformer_lens(path, config=None, device="cpu"):
    """A TransformerLens-format state dict (.safetensors, or a .pt read with
    torch.load(weights_only=True)) -> Model. config: None (the file's metadata "config"), a dict
    of HookedTransformerConfig keyword arguments, a HookedTransformerConfig, or a ModelConfig.
    TransformerLens's buffers (attn.mask, attn.IGNORE) are checked (_check_buffer) and dropped;
    any other key that is not one of the config's parameters, of its shape, and finite, is a
    one-line error naming it. The suffix is read case-insensitively, as export writes it."""
    path = pathlib.Path(path)
    tensors, stored = read_state_dict(path)
    cfg = _model_config(path, stored if config is None else config, given=config is not None)
    params = {name: value for name, value in tensors.items() if not BUFFER.fullmatch(name)}
    check_params(cfg, params, where=str(path))
    for name, value in params.items():
        if not np.isfinite(value).all():
            raise ValueError(f"{path}: key {name!r} holds NaN or infinite values (did the "
                             f"training diverge?)")
    for name, value in tensors.items():
        if BUFFER.fullmatch(name):
            _check_buffer(path, cfg, name, value)
    return Model(cfg, params={name: params[name] for name in param_shapes(cfg)}, device=device)


def _check_buffer(path, cfg, name, value):
    """A TransformerLens buffer must be one that computes what this engine does: a layer that
    exists; a causal mask (empty, as TransformerLens 3.9 keeps it, or [n_ctx, n_ctx] lower
    triangular, as earlier versions did); an IGNORE score that is a large negative scalar."""
    layer, kind = BUFFER.fullmatch(name).groups()
    if int(layer) >= cfg.n_layers:
        raise ValueError(f"{path}: key {name!r} is a buffer of layer {int(layer)}, but the model "
                         f"has {cfg.n_layers} layers")
    if kind == "mask":
        causal = np.tril(np.ones((cfg.n_ctx, cfg.n_ctx), dtype=bool))
        if value.shape not in ((0, 0), causal.shape):
            raise ValueError(f"{path}: key {name!r} has shape {value.shape}, expected (0, 0) or "
                             f"(n_ctx, n_ctx) = {causal.shape}")
        if value.size and (value.dtype.kind not in "biu" or not np.array_equal(value, causal)):
            raise ValueError(f"{path}: key {name!r} is not the causal (lower triangular) mask, "
                             f"the only attention this engine computes")
    elif value.shape not in ((), (1,)) or value.dtype.kind != "f" or not value.item() <= -1e4:
        raise ValueError(f"{path}: key {name!r} is not TransformerLens's IGNORE score (a "
                         f"scalar of -inf or a large negative number), shape {value.shape}")


def read_state_dict(path):
    """-> ({name: NumPy array}, the metadata's config JSON text or None)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if path.suffix.lower() == SUFFIX:          # as io.output_file, which export writes through
        return _read_safetensors(path)
    if path.suffix.lower() in TORCH_SUFFIXES:
        return _read_torch(path), None
    raise ValueError(f"{path}: expected a {SUFFIX} file or a PyTorch state dict "
                     f"({', '.join(TORCH_SUFFIXES)})")


def _model_config(path, config, given):
    """The ModelConfig from what the caller gave, or from the file's metadata JSON text."""
    where = "config" if given else f"{path}: metadata {CONFIG_KEY!r}"
    if config is None:
        raise ValueError(f"{path}: no {CONFIG_KEY!r} in its metadata; pass config= (the "
                         f"HookedTransformerConfig keyword arguments, or a ModelConfig)")
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, str):
        config = parse_json(config, where, kind=None)
    if hasattr(config, "to_dict") and not isinstance(config, dict):   # a HookedTransformerConfig
        config = config.to_dict()
    if not isinstance(config, dict):
        raise ValueError(f"{where}: expected HookedTransformerConfig keyword arguments (a dict), "
                         f"got {type(config).__name__}")
    try:
        return from_transformer_lens_config(config)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {one_line(e)}") from None


def _safetensors(what):
    try:
        import safetensors.numpy
    except ImportError:
        raise ValueError(f"to {what} a {SUFFIX} file, install safetensors (pip install "
                         f"safetensors)") from None
    return safetensors


# safetensors dtypes NumPy reads; half precision is widened to float32 (exactly)
_DTYPES = {"F16": np.float32, "F32": np.float32, "F64": np.float64, "BOOL": bool,
           "I64": np.int64, "I32": np.int32}


def _read_safetensors(path):
    safetensors = _safetensors("read")
    try:
        with safetensors.safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            tensors = {}
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype not in _DTYPES:
                    raise ValueError(f"{path}: key {name!r} has dtype {dtype}, which NumPy cannot "
                                     f"read (save it as float32)")
                tensors[name] = f.get_tensor(name).astype(_DTYPES[dtype])
    except safetensors.SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({one_line(e)})") from None
    return tensors, metadata.get(CONFIG_KEY)


def _read_torch(path):
    """A .pt state dict through torch.load(weights_only=True): tensors only, no code run."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading a PyTorch file needs torch (pip install torch); or save "
                         f"the state dict with safetensors.torch.save_file") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # UnpicklingError, RuntimeError (not a zip), EOFError (truncated)
        reason = one_line(str(e).split("WeightsUnpickler error:")[-1].strip().split(". ")[0])
        if not reason:       # EOFError() of an empty or cut file says nothing itself
            reason = ("the file is empty" if path.stat().st_size == 0 else
                      f"{type(e).__name__}: the file ends too soon (truncated?)"
                      if isinstance(e, EOFError) else type(e).__name__)
        raise ValueError(f"{path}: refused by torch.load(weights_only=True), which loads tensors "
                         f"only ({reason[:300]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (a dict of tensors keyed by parameter name)")
    return {name: _tensor_to_numpy(torch, path, name, value) for name, value in state.items()}


def _tensor_to_numpy(torch, path, name, tensor):
    """A dense tensor of real numbers -> NumPy; a sparse, quantized or other tensor NumPy
    cannot hold -> a one-line error naming the key."""
    if tensor.layout != torch.strided:
        raise ValueError(f"{path}: key {shown(name)} is a {tensor.layout} tensor; save it dense "
                         f"(tensor.to_dense())")
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()        # bfloat16 and float16, widened exactly
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError) as e:   # quantized, unsigned 16-64 bit on older torch, ...
        raise ValueError(f"{path}: key {shown(name)} has dtype {tensor.dtype}, which NumPy cannot "
                         f"read ({one_line(e)[:200]}); save it as float32") from None


# ---- command line -----------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m minitransformer.export",
        description="Write a run's weights as a safetensors file that TransformerLens 3.x loads "
                    "(HookedTransformerConfig in the metadata under 'config').")
    parser.add_argument("run", help="a run's run.npz or its directory")
    parser.add_argument("--step", type=int, help="a snapshot step (default: the latest weights)")
    parser.add_argument("--out", required=True, metavar="FILE" + SUFFIX, help="the file to write")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        output_file(args.out, "--out", suffix=SUFFIX)
        out = export_run(args.run, args.out, args.step)
    except ValueError as e:
        return error(e)
    except OSError as e:
        return error(f"--out {args.out}: {e.strerror or e}")
    print(f"{out}: a TransformerLens 3.x state dict, its HookedTransformerConfig in the metadata "
          f"under {CONFIG_KEY!r} (docs/transformerlens.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
