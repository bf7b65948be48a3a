"""The trained student as a GGUF file that llama.cpp serves: the LoRA merged into the base,
its tensors written under llama.cpp's names, with the base GGUF's own metadata (tokenizer,
chat template, hyperparameters) copied as it is.

Only a llama-architecture base that is itself a GGUF (the default, SmolLM2) can be exported
this way: its metadata is what llama.cpp needs, and we copy it rather than rebuild it. A
Hugging Face directory base trains, but its export is refused with a clear error.

Quantisation (`quant`):
* `q8_0` (DEFAULT_EXPORT, what a student is written as unless told otherwise) or `f16`: every
  2-D weight in that type, the norms F32: close to the merged fp32 weights; for SmolLM2,
  1.5x and 2.8x the base GGUF's size.
* `base` gives every tensor the type it had in the base GGUF (SmolLM2: Q4_1 for the
  projections, Q8_0 for the embeddings, F32 for the norms). The base's Q4_1 weights,
  dequantised and quantised again, land on the same grid, so an untrained export answers as
  the original does (the round-trip test). For a trained student it is too coarse: see
  DEFAULT_EXPORT.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from workers.errors import BadInput

# gguf (the train extra) is imported where it is used: this module loads without it.
QUANTS = ("base", "q8_0", "f16")
# In the sentiment example (examples/sentiment) the student agreed with the held-out labels
# 95 of 100 times as Q8_0 or F16, and 46 as Q4_1 (`base`): a LoRA's change to a weight is
# mostly smaller than a Q4_1 block's step, so quantising the merged weights that coarsely
# rounds much of it away.
DEFAULT_EXPORT = "q8_0"
_QTYPES = {"q8_0": "Q8_0", "f16": "F16"}
# What the gguf package's numpy quantisers write: a base tensor of another type (a K-quant)
# is written as F16 instead.
_REQUANTISABLE = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}
# Per layer: the Hugging Face llama module name -> llama.cpp's tensor name.
_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
# Written by GGUFWriter itself, or describing the file rather than the model.
_OWN_KEYS = {"general.architecture", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's name for a Hugging Face llama parameter, or None if it has none."""
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    parts = hf_name.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"]:
        return None
    module = ".".join(parts[3:-1])
    if module not in _LAYER_NAMES:
        return None
    return f"blk.{parts[2]}.{_LAYER_NAMES[module]}.{parts[-1]}"


def permute_for_gguf(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k (convert_hf_to_gguf's `permute`): transformers
    un-permuted these when it read the GGUF, so writing one back permutes again."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def hf_tensors(state: dict[str, Any], config: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, fp32 array) for each weight of a merged llama model."""
    for name, tensor in state.items():
        target = gguf_name(name)
        if target is None:
            continue
        array = tensor.detach().to("cpu").float().numpy()
        if target.endswith("attn_q.weight"):
            array = permute_for_gguf(array, config.num_attention_heads)
        elif target.endswith("attn_k.weight"):
            array = permute_for_gguf(array, config.num_key_value_heads)
        yield target, array


def export_gguf(model: Any, base_gguf: Path, out: Path, *, quant: str = "base") -> Path:
    """Write merged `model` (a transformers llama model, LoRA already merged) to OUT."""
    import gguf

    if quant not in QUANTS:
        raise BadInput(f"quantisation {quant!r}: choose one of {', '.join(QUANTS)}")
    reader = gguf.GGUFReader(base_gguf)
    arch = str(reader.fields["general.architecture"].contents())
    if arch != "llama":
        raise BadInput(f"{base_gguf}: export supports llama models; this one is {arch!r}")
    base_types = {t.name: t.tensor_type for t in reader.tensors}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch=arch)
    _copy_metadata(reader, writer, quant)
    written = 0
    for name, array in hf_tensors(model.state_dict(), model.config):
        if name not in base_types:
            continue  # lm_head tied to the embeddings: the base has no output.weight
        qtype = _target_type(base_types[name], array, quant)
        writer.add_tensor(name, _encode(array, qtype), raw_dtype=qtype)
        written += 1
    if written != len(base_types):
        raise BadInput(f"the model has {written} of the base's {len(base_types)} tensors")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)  # a file at OUT is always a whole one
    return out


def _copy_metadata(reader: Any, writer: Any, quant: str) -> None:
    import gguf

    for key, field in reader.fields.items():
        if key in _OWN_KEYS or (key == "general.file_type" and quant != "base"):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)
    if quant != "base":
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else 1)


def _target_type(base_type: Any, array: np.ndarray, quant: str) -> Any:
    from gguf import GGMLQuantizationType as Types

    if array.ndim < 2:
        return Types.F32  # norms: tiny, and llama.cpp wants them F32
    if quant != "base":
        return Types[_QTYPES[quant]]
    return base_type if base_type.name in _REQUANTISABLE else Types.F16


def _encode(array: np.ndarray, qtype: Any) -> np.ndarray:
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, qtype)


def export_lora_gguf(adapter_dir: Path, config: Any, out: Path) -> Path:
    """The PEFT adapter in ADAPTER_DIR as a llama.cpp LoRA adapter GGUF (F32), for
    `llama-server --lora` on top of the base GGUF: `<base tensor>.lora_a` (rank x in) and
    `.lora_b` (out x rank), B's rows permuted for q/k as the base's are, and the alpha that
    llama.cpp scales by (alpha / rank, as PEFT does)."""
    import json

    import gguf
    from safetensors.numpy import load_file

    settings = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch="llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(settings["lora_alpha"]))
    for key, array in weights.items():
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
        stem, part = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
        target = gguf_name(stem + ".weight")
        if target is None:
            raise BadInput(f"adapter tensor {key} has no llama.cpp name")
        side = "a" if part.startswith("A") else "b"
        matrix = array.astype(np.float32)
        if side == "b" and target.endswith("attn_q.weight"):
            matrix = permute_for_gguf(matrix, config.num_attention_heads)
        elif side == "b" and target.endswith("attn_k.weight"):
            matrix = permute_for_gguf(matrix, config.num_key_value_heads)
        writer.add_tensor(f"{target}.lora_{side}", matrix)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out
