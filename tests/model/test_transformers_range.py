"""A MIDUS checkpoint decodes correctly on every transformers release the package accepts.

`.ci/run` runs the tests marked `lowest` (this file among them) twice: under the newest release it
resolves and under the lowest accepted one (`.ci/lowest.txt`). MIDUS_OTHER_PYTHON names the other
environment's python, so a folder written here is loaded there.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch
import transformers
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoTokenizer

from midus.checkpoint import save_model
from midus.model.compat import OUTPUT_CACHE, TESTED_TRANSFORMERS, cache_name, range_note
from model_helpers import FAMILIES, grow, random_memory, tokens

ROOT = Path(__file__).parents[2]
FAMILY_NAMES = ("llama", *FAMILIES)


@pytest.fixture(scope="module")
def bases(tiny_base, family_bases):
    return {"llama": tiny_base, **family_bases}


def grown_with_memory(folder):
    """A MIDUS model whose memory blocks contribute (HIVE's P not zero)."""
    return random_memory(grow(folder, "midus"), scale=0.3)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_cached_decoding_equals_full_forward(bases, family, attn):
    base = AutoModelForCausalLM.from_pretrained(bases[family]).eval()
    model = grown_with_memory(bases[family])
    model.set_attn_implementation(attn)
    prompt = tokens(n=3, batch=1, seed=2, vocab=base.config.vocab_size)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
        full = model(out.sequences).logits  # no cache: one forward over prompt + continuation (23 > window 4)
        assert (full - base(out.sequences).logits).abs().max() > 1e-2, "the memory blocks must contribute"
    assert len(out.logits) == 20
    for step, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits[0], full[0, prompt.shape[1] - 1 + step], atol=1e-4, rtol=1e-4)


def prefilled(model, prompt):
    """A fresh KV cache holding `prompt`."""
    with torch.no_grad():
        return getattr(model(prompt, use_cache=True), OUTPUT_CACHE)


def test_cache_and_past_key_values_give_the_same_logits(tiny_base):
    model = grown_with_memory(tiny_base).eval()
    sequence = tokens(n=9, batch=2, seed=3)
    prompt, step = sequence[:, :8], sequence[:, 8:]
    with torch.no_grad():
        full = model(sequence).logits[:, -1]
        by_cache = model(step, cache=prefilled(model, prompt)).logits[:, -1]
        by_past = model(step, past_key_values=prefilled(model, prompt)).logits[:, -1]
        same = prefilled(model, prompt)
        by_both = model(step, cache=same, past_key_values=same).logits[:, -1]
    assert torch.equal(by_cache, by_past) and torch.equal(by_cache, by_both)
    torch.testing.assert_close(by_cache, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("argument", ["past_key_value", "kv_cache", "layer_past"])
def test_an_unknown_cache_argument_is_an_error(tiny_base, argument):
    model = grown_with_memory(tiny_base).eval()
    prompt = tokens(n=4, batch=1)
    cache = prefilled(model, prompt)
    with pytest.raises(TypeError, match=f"unknown cache argument.*{argument}.*cache=.*past_key_values="):
        model(prompt[:, -1:], **{argument: cache})


def test_two_different_caches_are_an_error(tiny_base):
    model = grown_with_memory(tiny_base).eval()
    prompt = tokens(n=4, batch=1)
    with pytest.raises(ValueError, match="two different KV caches"):
        model(prompt[:, -1:], cache=prefilled(model, prompt), past_key_values=prefilled(model, prompt))


def test_pyproject_and_ci_declare_the_tested_range():
    """The floors of pyproject.toml (and of the `lora` extra) are the pins .ci/run tests; transformers' range
    is the modeling code's."""
    lowest, newest = (Version(v) for v in TESTED_TRANSFORMERS)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {r.name: r for r in map(Requirement, project["dependencies"] + project["optional-dependencies"]["lora"])}
    assert requirements["transformers"].specifier == SpecifierSet(f">={lowest},<{newest.major}.{newest.minor + 1}")
    assert Version(transformers.__version__) in requirements["transformers"].specifier
    pins = [Requirement(line) for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert {pin.name for pin in pins} == {"transformers", "lm-eval", "accelerate", "datasets", "peft", "gguf"}
    for pin in pins:
        (floor,) = [s.version for s in requirements[pin.name].specifier if s.operator == ">="]
        assert pin.specifier == SpecifierSet(f"=={floor}"), pin


@pytest.mark.parametrize("version, outside", [
    ("5.15.2", True), ("5.16.0", False), ("5.20.1", False), ("5.24.0", False), ("5.24.3", False),
    ("5.25.0", False), ("5.25.2", False), ("5.26.0", True), ("6.0.0", True), ("4.57.6", True),
])
def test_range_note_names_both_versions_outside_the_range(version, outside):
    note = range_note(version)
    if not outside:
        assert note is None
    else:
        assert f"this is transformers {version}" in note
        assert f"tested with transformers {TESTED_TRANSFORMERS[0]} to {TESTED_TRANSFORMERS[1]}" in note


def test_a_signature_showing_both_cache_names_gives_the_new_one():
    """transformers 5.25's mask builders keep `past_key_values` in their signatures as a deprecated alias of
    `cache` (deprecate_kwarg's expose_in_signature: a keyword-only parameter before **kwargs)."""
    def builder(config, inputs_embeds, attention_mask, cache=None, position_ids=None, *, past_key_values=None,
                **kwargs):
        pass

    def old_builder(config, inputs_embeds, attention_mask, past_key_values=None, **kwargs):
        pass

    def layer(hidden_states, layer_past=None, **kwargs):
        pass

    assert cache_name(builder) == "cache" and cache_name(old_builder) == "past_key_values"
    with pytest.raises(ImportError, match="takes the KV cache under none of cache, past_key_values"):
        cache_name(layer)


@pytest.fixture(scope="module")
def saved(bases, tmp_path_factory):
    """{family: folder} of saved MIDUS models whose memory contributes, with expected logits and greedy tokens."""
    folders = {}
    for family in ("llama", "qwen2"):
        folder = tmp_path_factory.mktemp(f"saved-{family}") / "grown"
        model = grown_with_memory(bases[family]).eval()
        save_model(model, AutoTokenizer.from_pretrained(bases[family]), folder)
        x = tokens(n=10, batch=2, seed=4, vocab=model.config.vocab_size)
        with torch.no_grad():
            greedy = model.generate(x[:1, :3], max_new_tokens=12, min_new_tokens=12, do_sample=False)
            torch.save({"x": x, "logits": model(x).logits, "greedy": greedy}, folder.parent / "expected.pt")
        folders[family] = folder
    return folders


LOAD_SCRIPT = """
    import sys, warnings, torch, transformers
    from transformers import AutoModelForCausalLM
    folder, expected = sys.argv[1], torch.load(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(expected["x"]).logits, expected["logits"], atol=1e-5, rtol=1e-5)
        greedy = model.generate(expected["greedy"][:, :3], max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert torch.equal(greedy, expected["greedy"]), (greedy, expected["greedy"])
    assert not [m for m in sys.modules if m == "midus" or m.startswith("midus.")], "midus was imported"
    print("ok", transformers.__version__, type(model).__module__)
"""


def run_load_script(python, folder, env=None):
    script = textwrap.dedent(LOAD_SCRIPT)
    return subprocess.run([python, "-c", script, str(folder), str(folder.parent / "expected.pt")],
                          capture_output=True, text=True, cwd=folder.parent, env=env, timeout=300)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_folder_loads_without_midus_under_the_other_end_of_the_range(saved, family):
    other = os.environ.get("MIDUS_OTHER_PYTHON")
    if not other:
        if os.environ.get("CI"):
            pytest.fail("CI must set MIDUS_OTHER_PYTHON to the python of the other transformers environment")
        pytest.skip("MIDUS_OTHER_PYTHON (the python of an environment at the other end of the range) is not set")
    result = run_load_script(other, saved[family])
    assert result.returncode == 0, result.stderr[-3000:]
    _, version, module = result.stdout.split()
    assert version != transformers.__version__ and version in TESTED_TRANSFORMERS, "the other end of the range"
    assert module.startswith("transformers_modules")


def test_outside_the_range_warns_once_and_still_decodes(saved, tmp_path):
    """A checkpoint whose code was tested on other releases (as one written by an older midus): one
    warning naming both versions, however often it is loaded, and the same logits and tokens."""
    folder = tmp_path / "grown"
    shutil.copytree(saved["llama"], folder)
    shutil.copy(saved["llama"].parent / "expected.pt", tmp_path / "expected.pt")
    compat = folder / "compat.py"
    line = "TESTED_TRANSFORMERS = (" + ", ".join(f'"{v}"' for v in TESTED_TRANSFORMERS) + ")"
    assert line in compat.read_text()
    compat.write_text(compat.read_text().replace(line, 'TESTED_TRANSFORMERS = ("5.1.0", "5.2.0")'))
    (tmp_path / "load.py").write_text(textwrap.dedent(LOAD_SCRIPT))
    wrapper = textwrap.dedent(f"""
        import runpy, sys
        runpy.run_path({str(tmp_path / 'load.py')!r}, run_name="__main__")
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)  # a second load
    """)
    result = subprocess.run([sys.executable, "-c", wrapper, str(folder), str(tmp_path / "expected.pt")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok "), result.stdout
    note = f"tested with transformers 5.1.0 to 5.2.0; this is transformers {transformers.__version__}"
    assert result.stderr.count(note) == 1, result.stderr


def test_hand_edited_memory_settings_fail_on_load_with_one_line(saved, tmp_path):
    from midus.checkpoint import load_config
    from midus.errors import MidusError

    folder = tmp_path / "edited"
    folder.mkdir()
    config = json.loads((saved["llama"] / "config.json").read_text())
    for memory, message in [({"topk": 99}, "memory.topk=99 exceeds n_keys=8"),
                            ({"values": "dense"}, "memory.values: got 'dense'; valid: hive, per-head, shared"),
                            ({"latent_dim": 0}, "memory.latent_dim: got 0; must be an integer >= 1"),
                            ({"n_key": 8}, "memory: unknown setting(s) n_key")]:
        (folder / "config.json").write_text(json.dumps({**config, "memory": {**config["memory"], **memory}}))
        with pytest.raises(MidusError) as error:
            load_config(str(folder))
        assert message in str(error.value) and "\n" not in str(error.value)
