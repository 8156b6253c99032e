"""For teachers: exercise 15's checks catch the typical mistakes, and say which. Each mistake
is applied to the reference solution (a line of one function rewritten), and the check that
should catch it must fail with a message that names the problem; the solution itself passes
the same checks. ~5 s."""
import importlib.util
import pathlib

import pytest

import exercises.test_15_activation_patching as checks

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "exercises" / "solutions" / "ex15_activation_patching.py"

# (mistake, function, its line(s) as in the solution -> as mistaken, check, what its message says)
MISTAKES = [
    ("normalised the wrong way round", "normalised_metric",
     {"(value - corrupted_value) / (clean_value - corrupted_value)":
      "(value - clean_value) / (corrupted_value - clean_value)"},
     "test_normalised_metric_is_0_at_corrupted_and_1_at_clean", ["wrong way round"]),
    ("logits read one position late", "logit_difference",
     {"logits[rows, query, target] - logits[rows, query, distractor]":
      "logits[rows, query + 1, target] - logits[rows, query + 1, distractor]"},
     "test_logit_difference_against_the_engine", ["position query + 1"]),
    ("every row read at every row's target", "logit_difference",
     {"rows = np.arange(len(target))": "rows = slice(None)"},
     "test_logit_difference_against_the_engine", ["every pair of rows"]),
    ("corrupt writes into the clean tokens (no copy)", "corrupt",
     {"corrupted = np.array(tokens, copy=True)": "corrupted = np.asarray(tokens)"},
     "test_corrupt_replaces_one_token_per_row_by_a_new_one", ["changed the tokens it was given"]),
    ("corrupt one position off", "corrupt",
     {"row[position] = rng.choice(unused)": "row[position + 1] = rng.choice(unused)"},
     "test_corrupt_replaces_one_token_per_row_by_a_new_one", ["one after the one asked for"]),
    ("corrupt draws tokens the row holds", "corrupt",
     {"unused = np.setdiff1d(np.arange(1, d_vocab), row)": "unused = np.arange(1, d_vocab)"},
     "test_corrupt_replaces_one_token_per_row_by_a_new_one", ["already holds"]),
    ("the position hook writes into its read-only activation", "patch_position_hook",
     {"patched = activation.copy()": "patched = activation"},
     "test_the_position_hook_puts_one_clean_position_into_the_corrupted_run",
     ["read-only", "copy"]),
    ("... and so does patch_residual", "patch_position_hook",
     {"patched = activation.copy()": "patched = activation"},
     "test_residual_map_against_the_engine", ["read-only", "copy"]),
    ("the whole sequence patched", "patch_position_hook",
     {"patched[:, position] = clean_activation[:, position]": "patched[:] = clean_activation"},
     "test_the_position_hook_puts_one_clean_position_into_the_corrupted_run",
     ["every position"]),
    ("... seen in the residual map", "patch_position_hook",
     {"patched[:, position] = clean_activation[:, position]": "patched[:] = clean_activation"},
     "test_residual_map_against_the_engine", ["whole sequence"]),
    ("the hook one position early", "patch_position_hook",
     {"patched[:, position] = clean_activation[:, position]":
      "patched[:, position - 1] = clean_activation[:, position - 1]"},
     "test_the_position_hook_puts_one_clean_position_into_the_corrupted_run",
     ["one before the one asked for"]),
    ("... seen in the residual map", "patch_position_hook",
     {"patched[:, position] = clean_activation[:, position]":
      "patched[:, position - 1] = clean_activation[:, position - 1]"},
     "test_residual_map_against_the_engine", ["off-by-one in the position"]),
    ("the hook indexes the batch axis", "patch_position_hook",
     {"patched[:, position] = clean_activation[:, position]":
      "patched[position] = clean_activation[position]"},
     "test_the_position_hook_puts_one_clean_position_into_the_corrupted_run", ["batch"]),
    ("the hook patches corrupted into clean", "patch_position_hook",
     {"patched = activation.copy()": "patched = clean_activation.copy()",
      "patched[:, position] = clean_activation[:, position]":
      "patched[:, position] = activation[:, position]"},
     "test_the_position_hook_puts_one_clean_position_into_the_corrupted_run",
     ["the other way round"]),
    ("corrupted patched into the clean run", "patch_residual",
     {"_, clean_cache = model.run_with_cache(clean_tokens)":
      "_, clean_cache = model.run_with_cache(corrupted_tokens)",
      "metric(model.forward(corrupted_tokens, hooks={name: hook}))":
      "metric(model.forward(clean_tokens, hooks={name: hook}))"},
     "test_residual_map_against_the_engine", ["the other way round"]),
    ("the output of the layer patched, not its input", "patch_residual",
     {'name = f"blocks.{layer}.hook_resid_pre"': 'name = f"blocks.{layer}.hook_resid_post"'},
     "test_residual_map_against_the_engine", ["hook_resid_post"]),
    ("the head axis of z confused with the position axis", "patch_head_hook",
     {"patched[:, :, head] = clean_z[:, :, head]": "patched[:, head] = clean_z[:, head]"},
     "test_the_head_hook_puts_one_clean_head_into_the_corrupted_run", ["position", "axis 2"]),
    ("... seen in the head map", "patch_head_hook",
     {"patched[:, :, head] = clean_z[:, :, head]": "patched[:, head] = clean_z[:, head]"},
     "test_head_map_against_the_engine", ["position h of every head", "axis 2"]),
    ("the head axis of z confused with d_head", "patch_head_hook",
     {"patched[:, :, head] = clean_z[:, :, head]": "patched[..., head] = clean_z[..., head]"},
     "test_head_map_against_the_engine", ["d_head"]),
    ("the head hook writes into its read-only z", "patch_head_hook",
     {"patched = z.copy()": "patched = z"},
     "test_the_head_hook_puts_one_clean_head_into_the_corrupted_run", ["read-only", "copy"]),
    ("... and so does patch_head_outputs", "patch_head_hook",
     {"patched = z.copy()": "patched = z"},
     "test_head_map_against_the_engine", ["read-only", "copy"]),
    ("every head of the layer patched", "patch_head_hook",
     {"patched[:, :, head] = clean_z[:, :, head]": "patched[:] = clean_z"},
     "test_head_map_against_the_engine", ["all of the layer's heads"]),
    ("corrupted head outputs patched into the clean run", "patch_head_outputs",
     {"_, clean_cache = model.run_with_cache(clean_tokens)":
      "_, clean_cache = model.run_with_cache(corrupted_tokens)",
      "metric(model.forward(corrupted_tokens, hooks={name: hook}))":
      "metric(model.forward(clean_tokens, hooks={name: hook}))"},
     "test_head_map_against_the_engine", ["the other way round"]),
    ("the induction head as the largest effect of the whole map", "name_heads",
     {"later = head_map[layer + 1:]": "later = head_map",
      "return previous_token, (layer + 1 + int(l), int(h))":
      "return previous_token, (int(l), int(h))"},
     "test_name_heads_on_made_up_maps", ["largest effect of the whole map"]),
    ("the previous-token head from the layer after the move", "name_heads",
     {"previous_token = (layer, int(head_map[layer].argmax()))":
      "previous_token = (layer + 1, int(head_map[layer + 1].argmax()))"},
     "test_name_heads_on_made_up_maps", ["previous-token head is in layer 2"]),
    ("(head, layer) for (layer, head)", "name_heads",
     {"previous_token = (layer, int(head_map[layer].argmax()))":
      "previous_token = (int(head_map[layer].argmax()), layer)",
      "return previous_token, (layer + 1 + int(l), int(h))":
      "return previous_token, (int(h), layer + 1 + int(l))"},
     "test_name_heads_on_made_up_maps", ["(head, layer) instead of (layer, head)"]),
]


def function_span(text, function):
    """(start, end) of a top-level function's source in text: from its def to the next."""
    start = text.index(f"\ndef {function}(")
    ends = [i for i in (text.find("\ndef ", start + 1), text.find('\nif __name__', start + 1))
            if i != -1]
    return start, min(ends)


def mistaken(edits, function, folder):
    """The reference solution with `edits` made in the code of `function` (not in its
    hints, which show the same lines), loaded as a module."""
    text = SOLUTION.read_text()
    start, end = function_span(text, function)
    lines = text[start:end].splitlines(keepends=True)
    code = [i for i, line in enumerate(lines) if not line.lstrip().startswith("#")]
    for old, new in edits.items():
        found = [i for i in code if old in lines[i]]
        assert len(found) == 1, (f"the code of {function} in the solution should hold {old!r} "
                                 f"once: update this mistake to the solution")
        lines[found[0]] = lines[found[0]].replace(old, new)
    body = "".join(lines)
    path = folder / "ex15_activation_patching.py"
    path.write_text(text[:start] + body + text[end:])
    spec = importlib.util.spec_from_file_location(f"ex15_mistaken_{abs(hash(body))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference():
    spec = importlib.util.spec_from_file_location("ex15_reference", SOLUTION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("check", sorted({m[3] for m in MISTAKES}))
def test_the_solution_passes_the_checks_used(monkeypatch, check):
    monkeypatch.setattr(checks, "ex", reference())
    getattr(checks, check)()


@pytest.mark.parametrize("mistake, function, edits, check, words", MISTAKES,
                         ids=[m[0] for m in MISTAKES])
def test_the_mistake_fails_its_check_by_name(monkeypatch, tmp_path, mistake, function, edits,
                                             check, words):
    monkeypatch.setattr(checks, "ex", mistaken(edits, function, tmp_path))
    with pytest.raises(pytest.fail.Exception) as failure:
        getattr(checks, check)()
    message = str(failure.value)
    assert all(word in message for word in words), \
        f"{mistake}: {check} fails, but its message does not say {words}:\n{message}"
