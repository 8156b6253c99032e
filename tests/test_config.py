import math

import pytest

from minitransformer import ModelConfig
from minitransformer.params import param_shapes


def test_defaults_and_derived_fields():
    cfg = ModelConfig()
    assert (cfg.d_head, cfg.d_mlp, cfg.positional_embedding_type) == (32, None, "shortformer")
    assert ModelConfig(attn_only=False, d_model=8, n_heads=2).d_mlp == 32
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("fields,culprit", [
    (dict(n_layers=-1), "n_layers"),
    (dict(d_model=0), "d_model"),
    (dict(n_heads=3, d_model=128), "d_head"),          # d_head not given and 3 does not divide 128
    (dict(d_head=-4), "d_head"),
    (dict(attn_only=False, d_mlp=0), "d_mlp"),
    (dict(positional_embedding_type="rotary"), "positional_embedding_type"),
    (dict(normalization_type="RMS"), "normalization_type"),
    (dict(act_fn="swish"), "act_fn"),
    (dict(smeared_key="yes"), "smeared_key"),
    (dict(n_ctx=2.5), "n_ctx"),
    (dict(pos_init="learned"), "pos_init"),
])
def test_bad_fields_are_one_line_errors_naming_the_field(fields, culprit):
    with pytest.raises(ValueError) as error:
        ModelConfig(**fields)
    message = str(error.value)
    assert message.startswith(culprit) and "\n" not in message


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown config key 'n_layer'; valid keys: n_layers"):
        ModelConfig.from_dict({"n_layer": 2})


# ---- sizes are bounded before anything is built (issue "Reliability, round 2", item 3) ------

@pytest.mark.parametrize("fields,culprit", [
    (dict(n_layers=10**12), "n_layers"),
    (dict(n_layers=10**6), "n_layers"),
    (dict(d_model=2**30, n_heads=1), "d_model"),
    (dict(n_heads=2**30, d_head=1), "n_heads"),
    (dict(d_head=2**30), "d_head"),
    (dict(attn_only=False, d_mlp=10**15), "d_mlp"),
    (dict(n_ctx=10**9), "n_ctx"),
    (dict(d_vocab=10**12), "d_vocab"),
    # each size allowed alone, their product is not: the parameter count is bounded too
    (dict(d_vocab=2**20, d_model=4096, n_heads=32), "d_vocab"),
    (dict(n_layers=4000, d_model=2048, n_heads=16), "n_layers"),
    (dict(n_ctx=2**24, d_model=1024, n_heads=8), "n_ctx"),
])
def test_sizes_beyond_any_real_model_are_refused_naming_the_field(fields, culprit):
    with pytest.raises(ValueError) as error:
        ModelConfig(**fields)
    message = str(error.value)
    assert message.startswith(culprit + ": ") and "more than this engine builds" in message
    assert "\n" not in message


@pytest.mark.parametrize("fields", [
    dict(), dict(attn_only=False), dict(attn_only=False, normalization_type=None, d_mlp=7),
    dict(smeared_key=True, n_layers=3, d_head=5), dict(positional_embedding_type="none"),
    dict(n_layers=1, d_model=12288, n_heads=96, d_vocab=50257, n_ctx=2048),   # one GPT-3 layer
])
def test_the_parameter_count_is_that_of_the_parameters_built(fields):
    cfg = ModelConfig(**fields)
    assert cfg.n_parameters() == sum(math.prod(s) for s in param_shapes(cfg).values())


def test_from_dict_refuses_what_is_not_a_dict():
    for values in ([["n_layers", 2]], "n_layers=2", None):
        with pytest.raises(ValueError, match="^config: expected a dict of fields, got "):
            ModelConfig.from_dict(values)


def test_a_huge_or_deeply_nested_value_is_shown_cut_short():
    nested = []
    for _ in range(100_000):                  # repr() of it would exhaust the stack
        nested = [nested]
    for fields in (dict(act_fn="x" * 10**6), dict(n_layers=nested), dict(pos_scale=10**400),
                   dict(attn_only={"a": nested})):
        with pytest.raises(ValueError) as error:
            ModelConfig.from_dict(fields)
        message = str(error.value)
        assert message.startswith(next(iter(fields))) and len(message) < 200, message
