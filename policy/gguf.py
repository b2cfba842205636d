"""A fine-tuned Hugging Face Llama folder → a GGUF file that llama.cpp runs (the fast CPU path).

Why: on CPU, llama.cpp generates several times faster than transformers' ``generate`` on the same
135M model (figures in docs/policy.md), and llama.cpp reads GGUF only.

What it does (``convert_to_gguf``): the *architecture* comes from the folder's ``config.json``
(any Llama: layers, heads, GQA, RMS epsilon, RoPE base, tied or untied output), the *weights*
from its safetensors, and the *tokenizer* (vocabulary, merges, pre-tokenizer, token types) from
the embedded base GGUF (SmolLM2-135M-Instruct) after checking that the folder's tokenizer has the
very same vocabulary and merges. Copying the base's tokenizer block rather than rebuilding one from
``tokenizer.json`` is deliberate: llama.cpp picks its pre-tokenizer by name (``smollm``), which
llama.cpp's own converter finds by hashing tokenizer outputs against a table we do not ship; a
wrong guess would tokenise silently differently. The folder's own chat template and special tokens
win over the base's (fine-tuning may change them; they index the same vocabulary).

Anything else (another architecture, another vocabulary, RoPE scaling, biases) raises
:class:`NotConvertible`: the caller falls back to the ``transformers`` provider, which runs any
causal LM, only more slowly. A folder that is not a causal LM at all raises :class:`ConversionError`.

Weights are written as F16 by default (F32 norms): on the embedded model llama.cpp then reproduces
transformers' greedy tokens exactly and runs as fast as Q8_0, which changes greedy replies within a
few tokens (figures in docs/policy.md); ``q8_0`` halves the file for larger models.

q and k projections are permuted the way llama.cpp's ``convert_hf_to_gguf.py`` does (transformers'
GGUF loader applies the inverse, ``_reverse_permute_weights``), because llama.cpp's RoPE pairs
adjacent dimensions while Hugging Face's pairs the two halves of each head.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from db.errors import TheraPrefError

GGUF_NAME = "model.gguf"
OUTTYPES = ("f16", "q8_0")
# Bump when the written file would change for the same input (forces re-conversion of stale files).
CONVERTER_VERSION = 1
FINGERPRINT_KEY = "therapref.source_fingerprint"
# Files whose change makes an existing GGUF stale.
_SOURCE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json", "model.safetensors.index.json")


class ConversionError(TheraPrefError, ValueError):
    """The folder is not a usable causal language model (missing files, wrong kind of model)."""


class NotConvertible(TheraPrefError, ValueError):
    """A causal LM that this converter cannot turn into GGUF; the transformers provider can run it."""


@dataclass(frozen=True)
class LlamaShape:
    """The hyperparameters llama.cpp needs, read from a Hugging Face ``config.json``."""

    n_layers: int
    hidden: int
    ffn: int
    n_head: int
    n_head_kv: int
    head_dim: int
    vocab: int
    context: int
    rms_eps: float
    rope_theta: float
    tied: bool


def _config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise ConversionError(f"{model_dir}: no such folder")
    if not path.is_file():
        if (model_dir / "adapter_config.json").is_file():
            raise ConversionError(f"{model_dir}: holds a LoRA adapter only; merge it into its base first "
                                  "(therapref finetune local saves merged models)")
        raise ConversionError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: not a JSON object")
    return config


def check_causal_lm(model_dir: Path) -> dict[str, Any]:
    """The folder's config, if it is a causal LM with weights; else one clear :class:`ConversionError`."""
    config = _config(model_dir)
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if not any(a.endswith("ForCausalLM") for a in architectures):
        # Older causal LMs carry other class names (GPT2LMHeadModel): ask transformers' own table.
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if not set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) & set(architectures):
            found = ", ".join(architectures) or f"model_type {config.get('model_type')!r}"
            raise ConversionError(f"{model_dir / 'config.json'}: not a causal language model ({found}); "
                                  "a policy must be one, e.g. LlamaForCausalLM")
    if not _weight_files(model_dir) and not list(model_dir.glob("pytorch_model*.bin")):
        raise ConversionError(f"{model_dir}: no model weights (*.safetensors) in the folder")
    return config


def llama_shape(config: dict[str, Any]) -> LlamaShape:
    """Check a config is a plain Llama that llama.cpp's ``llama`` architecture runs, and read its shape.

    >>> llama_shape({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2,
    ...              "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    ...              "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 512,
    ...              "rms_norm_eps": 1e-5, "rope_theta": 10000.0}).head_dim
    16
    >>> llama_shape({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    Traceback (most recent call last):
    ...
    policy.gguf.NotConvertible: model_type 'gpt2' is not a Llama (only Llama converts to GGUF here)
    """
    if config.get("model_type") != "llama" or "LlamaForCausalLM" not in (config.get("architectures") or []):
        raise NotConvertible(f"model_type {config.get('model_type')!r} is not a Llama "
                             "(only Llama converts to GGUF here)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise NotConvertible("attention or MLP biases are not supported by the GGUF converter")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise NotConvertible(f"RoPE scaling {rope.get('rope_type') or rope.get('type')!r} is not supported "
                             "by the GGUF converter")
    try:
        n_head = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        shape = LlamaShape(
            n_layers=int(config["num_hidden_layers"]), hidden=hidden, ffn=int(config["intermediate_size"]),
            n_head=n_head, n_head_kv=int(config.get("num_key_value_heads") or n_head),
            head_dim=int(config.get("head_dim") or hidden // n_head), vocab=int(config["vocab_size"]),
            context=int(config.get("max_position_embeddings") or 2048),
            rms_eps=float(config.get("rms_norm_eps") or 1e-6),
            rope_theta=float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0),
            tied=bool(config.get("tie_word_embeddings", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise NotConvertible(f"config.json lacks a usable {exc} for a Llama") from None
    if shape.head_dim * n_head != hidden:
        raise NotConvertible("head_dim × num_attention_heads differs from hidden_size (not supported)")
    return shape


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face q/k rows → llama.cpp's order (llama.cpp's ``convert_hf_to_gguf.py`` ``permute``;
    transformers' GGUF loader undoes it with ``_reverse_permute_weights``). ``n_head`` is the number
    of heads of this projection (key/value heads for k).

    Each head's rows ``[x0..x(d/2-1), y0..y(d/2-1)]`` become ``[x0, y0, x1, y1, …]``:

    >>> permute_qk(np.arange(8).reshape(8, 1), 2).ravel().tolist()
    [0, 2, 1, 3, 4, 6, 5, 7]
    """
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


def gguf_tensor_name(hf_name: str) -> str | None:
    """The llama.cpp name of a Hugging Face Llama tensor (``None``: not one llama.cpp uses).

    >>> gguf_tensor_name("model.layers.3.self_attn.k_proj.weight")
    'blk.3.attn_k.weight'
    >>> gguf_tensor_name("lm_head.weight")
    'output.weight'
    >>> gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    True
    """
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit() and parts[3] in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES[parts[3]]}"
    return None


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConversionError(f"{index}: unreadable shard index: {exc}") from None
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    return sorted(model_dir.glob("*.safetensors"))


def source_fingerprint(model_dir: Path, outtype: str) -> str:
    """A digest of what the GGUF is made from (files' names, sizes, modification times, the output
    type and the converter version): an unchanged digest means the existing GGUF is up to date."""
    digest = hashlib.sha256(f"v{CONVERTER_VERSION}:{outtype}".encode())
    for path in sorted({*(model_dir / n for n in _SOURCE_FILES), *_weight_files(model_dir)}):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType → bytes


def read_string_kv(gguf_file: Path, key: str, *, max_keys: int = 8) -> str | None:
    """A string value among the first ``max_keys`` header entries of a GGUF (``None``: absent).

    ``gguf.GGUFReader`` parses the whole 49k-token vocabulary first (seconds on a busy machine); the
    converter writes its fingerprint second, right after ``general.architecture``, so reading it
    for the up-to-date check stays a few small reads.
    """
    import struct

    try:
        with open(gguf_file, "rb") as handle:
            if handle.read(4) != b"GGUF":
                return None
            _version, _tensors, n_kv = struct.unpack("<IQQ", handle.read(20))
            for _ in range(min(n_kv, max_keys)):
                (length,) = struct.unpack("<Q", handle.read(8))
                name = handle.read(length).decode("utf-8", "replace")
                (vtype,) = struct.unpack("<I", handle.read(4))
                if vtype == 8:
                    (length,) = struct.unpack("<Q", handle.read(8))
                    value = handle.read(length)
                    if name == key:
                        return value.decode("utf-8", "replace")
                elif vtype in _SCALAR_SIZES:
                    handle.seek(_SCALAR_SIZES[vtype], 1)
                else:
                    return None  # an array this early: not a file we wrote
    except (OSError, struct.error):
        return None
    return None


def stored_fingerprint(gguf_file: Path) -> str | None:
    """The source fingerprint written into a GGUF by this converter (``None``: absent or unreadable)."""
    return read_string_kv(gguf_file, FINGERPRINT_KEY)


def is_up_to_date(model_dir: Path, gguf_file: Path, outtype: str = "f16") -> bool:
    """True when ``gguf_file`` was converted from ``model_dir`` as it is now."""
    return gguf_file.is_file() and stored_fingerprint(gguf_file) == source_fingerprint(model_dir, outtype)


def _token_id(value: Any, vocab: dict[str, int]) -> int | None:
    """A special token from ``tokenizer_config.json`` (a string or ``{"content": …}``) as an id.

    >>> _token_id({"content": "<b>"}, {"<b>": 4}), _token_id("<x>", {}), _token_id(None, {})
    (4, None, None)
    """
    if isinstance(value, dict):
        value = value.get("content")
    return vocab.get(value) if isinstance(value, str) else None


def _merge_strings(merges: list[Any]) -> list[str]:
    """tokenizers' merges (``"a b"`` or ``["a", "b"]``) as GGUF stores them (``"a b"``).

    >>> _merge_strings([["Ġ", "t"], "i n"])
    ['Ġ t', 'i n']
    """
    return [" ".join(m) if isinstance(m, list) else str(m) for m in merges]


_SPECIAL_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                 "pad": "tokenizer.ggml.padding_token_id", "unk": "tokenizer.ggml.unknown_token_id"}


@dataclass
class _Tokenizer:
    vocab: dict[str, int]
    merges: list[str] | None
    chat_template: str | None
    special: dict[str, int | None]


def _read_tokenizer(model_dir: Path) -> _Tokenizer:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise NotConvertible(f"{model_dir}: no tokenizer.json (a fast tokenizer is needed to check the vocabulary)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        vocab = dict(model["vocab"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotConvertible(f"{path}: unreadable tokenizer: {exc}") from None
    for added in data.get("added_tokens") or []:
        vocab[added["content"]] = int(added["id"])
    config: dict[str, Any] = {}
    config_path = model_dir / "tokenizer_config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
    template = config.get("chat_template")
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    special = {key: _token_id(config.get(f"{key}_token"), vocab) for key in ("bos", "eos", "pad", "unk")}
    merges = _merge_strings(model["merges"]) if isinstance(model.get("merges"), list) else None
    return _Tokenizer(vocab, merges, template if isinstance(template, str) else None, special)


def _check_vocabulary(tokenizer: _Tokenizer, base_tokens: list[str], base_merges: list[str],
                      shape: LlamaShape) -> None:
    if len(tokenizer.vocab) != len(base_tokens) or any(tokenizer.vocab.get(t) != i for i, t in enumerate(base_tokens)):
        raise NotConvertible(f"its vocabulary ({len(tokenizer.vocab):,} tokens) differs from the base GGUF's "
                             f"({len(base_tokens):,}); only the base's tokenizer can be reused")
    if tokenizer.merges is not None and tokenizer.merges != base_merges:
        raise NotConvertible("its BPE merges differ from the base GGUF's; only the base's tokenizer can be reused")
    if shape.vocab != len(base_tokens):
        raise NotConvertible(f"config vocab_size {shape.vocab:,} differs from the tokenizer's {len(base_tokens):,} "
                             "(resized embeddings)")


@dataclass
class ConversionResult:
    """What ``convert_to_gguf`` wrote (or found up to date)."""

    path: Path
    outtype: str
    reused: bool
    seconds: float
    size_bytes: int


def convert_to_gguf(model_dir: str | Path, output: str | Path | None = None, *, outtype: str = "f16",
                    base_gguf: str | Path | None = None, force: bool = False) -> ConversionResult:
    """Write ``model_dir``'s weights as a GGUF (default ``model_dir/model.gguf``); reuse it when up to date.

    Raises :class:`ConversionError` for a folder that is not a causal LM and :class:`NotConvertible`
    for a causal LM this converter cannot express (the caller may fall back to transformers).
    The file is written under a temporary name and renamed, so a crash never leaves half a GGUF.
    """
    import gguf

    from candidates.embedded import smollm2_gguf_path

    started = time.perf_counter()
    model_dir = Path(model_dir).expanduser()
    if outtype not in OUTTYPES:
        raise ConversionError(f"unknown GGUF type {outtype!r} (expected {', '.join(OUTTYPES)})")
    config = check_causal_lm(model_dir)
    shape = llama_shape(config)
    output = Path(output) if output is not None else model_dir / GGUF_NAME
    fingerprint = source_fingerprint(model_dir, outtype)
    if not force and output.is_file() and stored_fingerprint(output) == fingerprint:
        return ConversionResult(output, outtype, True, time.perf_counter() - started, output.stat().st_size)
    files = _weight_files(model_dir)
    if not files:
        raise NotConvertible(f"{model_dir}: weights are not in safetensors format (save_pretrained writes them)")
    base = gguf.GGUFReader(Path(base_gguf) if base_gguf else smollm2_gguf_path())
    if base.fields["general.architecture"].contents() != "llama":
        raise NotConvertible("the base GGUF is not a Llama")
    tokenizer = _read_tokenizer(model_dir)
    base_tokens = base.fields["tokenizer.ggml.tokens"].contents()
    _check_vocabulary(tokenizer, base_tokens, base.fields["tokenizer.ggml.merges"].contents(), shape)

    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        writer = gguf.GGUFWriter(tmp, arch="llama")
        _write_metadata(writer, base, shape, tokenizer, model_dir.resolve().name, outtype, fingerprint)
        _write_tensors(writer, files, shape, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return ConversionResult(output, outtype, False, time.perf_counter() - started, output.stat().st_size)


def _write_metadata(writer: Any, base: Any, shape: LlamaShape, tokenizer: _Tokenizer, name: str,
                    outtype: str, fingerprint: str) -> None:
    import gguf

    writer.add_string(FINGERPRINT_KEY, fingerprint)  # second entry: read_string_kv finds it at once
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if outtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(shape.vocab)
    writer.add_rope_dimension_count(shape.head_dim)
    # The tokenizer block, as the base GGUF holds it (vocabulary already checked to be identical).
    overridden = {"tokenizer.chat_template": tokenizer.chat_template,
                  **{_SPECIAL_KEYS[k]: v for k, v in tokenizer.special.items()}}
    for key, field in base.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = overridden.get(key)
        writer.add_key_value(key, field.contents() if value is None else value, vtype, sub_type=sub_type)
    if tokenizer.chat_template and "tokenizer.chat_template" not in base.fields:
        writer.add_chat_template(tokenizer.chat_template)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tensors(writer: Any, files: list[Path], shape: LlamaShape, outtype: str) -> None:
    import gguf
    from safetensors import safe_open

    expected = {"token_embd.weight", "output_norm.weight",
                *(f"blk.{i}.{n}" for i in range(shape.n_layers) for n in _LAYER_NAMES.values())}
    if not shape.tied:
        expected.add("output.weight")
    written: set[str] = set()
    qtype = gguf.GGMLQuantizationType.Q8_0 if outtype == "q8_0" else gguf.GGMLQuantizationType.F16
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for hf_name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                name = gguf_tensor_name(hf_name)
                if name is None:
                    if hf_name.endswith("rotary_emb.inv_freq"):
                        continue
                    raise NotConvertible(f"{file.name}: tensor {hf_name!r} has no place in a llama.cpp Llama")
                if name == "output.weight" and shape.tied:
                    continue  # tied: llama.cpp reuses token_embd, as transformers does
                data = handle.get_tensor(hf_name).float().numpy()
                if name.endswith("attn_q.weight"):
                    data = permute_qk(data, shape.n_head)
                elif name.endswith("attn_k.weight"):
                    data = permute_qk(data, shape.n_head_kv)
                if data.ndim == 1:
                    writer.add_tensor(name, data.astype(np.float32))
                elif qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32 == 0:
                    writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
                else:  # F16 also where a row does not split into Q8_0's 32-value blocks
                    writer.add_tensor(name, data.astype(np.float16))
                written.add(name)
    missing = sorted(expected - written)
    if missing:
        raise NotConvertible(f"weights lack {missing[0]} (and {len(missing) - 1} more)" if len(missing) > 1
                             else f"weights lack {missing[0]}")
