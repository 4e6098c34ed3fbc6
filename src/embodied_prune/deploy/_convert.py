"""llama.cpp's converter with the two changes our checkpoints need (run as a script, see :mod:`.export`).

The converter class is llama.cpp's own, picked from the model's ``config.json`` as ``convert_hf_to_gguf.py`` picks
it; it writes the vocabulary, tensor names, dtypes and file. This script subclasses it only where the plain
converter cannot write our model:

- ``--per-layer`` (a Llama whose decoder layers differ in shape). llama.cpp's ``llama`` graph builds every layer
  with one head count and one MLP width, and the converter's ``LlamaModel`` writes them as single numbers (and
  undoes the rotary permutation with one head count). llama.cpp's ``deci`` architecture (DeciLM,
  Llama-3.1-Nemotron-51B: Llamas pruned to a different width per layer) reads ``head_count``, ``head_count_kv`` and
  ``feed_forward_length`` as per-layer arrays and is otherwise the Llama graph; but the converter's ``DeciModel``
  only takes Nemotron's ``block_configs`` (every layer keeps all query heads, MLP widths are multiples of 256). So
  we change only the three per-layer numbers, the architecture tag, and the head counts the rotary permutation of
  each layer's ``q_proj`` / ``k_proj`` uses. The shapes come from the folder's ``embodied_prune.json``.
- ``--byte-vocab`` (a byte-level BPE vocabulary with no merges: our random built-ins and ``tinylm``). The
  converter names a BPE pre-tokenizer by hashing the token ids of a test text and refuses a hash it does not know;
  and llama.cpp refuses a BPE vocabulary without a merges list while gguf-py refuses to write an empty one. With no
  merges every byte is its own token whatever the pre-tokenizer splits, so llama.cpp's ``default`` pre-tokenizer
  gives the same ids, and one merge that can never apply (both halves are two characters long, and only a merge
  can make a symbol longer than one character) stands in for the empty list.

Usage: ``python _convert.py CONVERTER_DIR MODEL_DIR OUTFILE OUTTYPE [--per-layer] [--byte-vocab]``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

NEVER_APPLIES = "ÄĬ ĬÄ"  # a merge of two two-character symbols: nothing forms them when this is the only merge


def _per_layer(base, gguf, shapes: list[dict]):
    class PerLayerLlama(base):
        model_arch = gguf.MODEL_ARCH.DECI

        def set_gguf_parameters(self) -> None:
            super().set_gguf_parameters()
            head_dim = shapes[0]["head_dim"]
            self.gguf_writer.add_head_count([s["num_heads"] for s in shapes])
            self.gguf_writer.add_head_count_kv([s["num_kv_heads"] for s in shapes])
            self.gguf_writer.add_feed_forward_length([s["intermediate_size"] for s in shapes])
            self.gguf_writer.add_key_length(head_dim)
            self.gguf_writer.add_value_length(head_dim)
            self.gguf_writer.add_rope_dimension_count(head_dim)

        def modify_tensors(self, data_torch, name: str, bid: int | None):
            if bid is None:
                yield from super().modify_tensors(data_torch, name, bid)
                return
            saved = self.hparams["num_attention_heads"], self.hparams["num_key_value_heads"]
            self.hparams["num_attention_heads"] = shapes[bid]["num_heads"]
            self.hparams["num_key_value_heads"] = shapes[bid]["num_kv_heads"]
            try:
                yield from super().modify_tensors(data_torch, name, bid)
            finally:
                self.hparams["num_attention_heads"], self.hparams["num_key_value_heads"] = saved

    return PerLayerLlama


def _byte_vocab(base, gguf):
    class ByteVocab(base):
        model_arch = base.model_arch  # the converter wants every subclass to name its architecture

        def set_vocab(self) -> None:
            # LlamaModel.set_vocab tries sentencepiece files first; a byte vocabulary has none, so go straight to BPE.
            self._set_vocab_gpt2()

        def get_vocab_base_pre(self, tokenizer) -> str:
            return "default"

        def _set_vocab_gpt2(self) -> None:
            tokens, toktypes, tokpre = self.get_vocab_base()
            self.gguf_writer.add_tokenizer_model("gpt2")
            self.gguf_writer.add_tokenizer_pre(tokpre)
            self.gguf_writer.add_token_list(tokens)
            self.gguf_writer.add_token_types(toktypes)
            special = gguf.SpecialVocab(self.dir_model, load_merges=False)
            special.merges = [NEVER_APPLIES]
            special.add_to_gguf(self.gguf_writer)

    return ByteVocab


def main(argv: list[str]) -> None:
    converter, model_dir, outfile, outtype, *flags = argv
    sys.path.insert(0, converter)
    sys.path.insert(1, str(Path(converter) / "gguf-py"))
    import gguf  # the converter's own gguf-py, matching the runtime
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    hparams = ModelBase.load_hparams(Path(model_dir), False)
    cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT), mmproj=False)
    if "--per-layer" in flags:
        shapes = json.loads((Path(model_dir) / "embodied_prune.json").read_text())["layer_shapes"]
        cls = _per_layer(cls, gguf, shapes)
    if "--byte-vocab" in flags:
        cls = _byte_vocab(cls, gguf)
    types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    logging.basicConfig(level=logging.INFO)
    with torch.inference_mode():
        cls(Path(model_dir), types[outtype], Path(outfile)).write()


if __name__ == "__main__":
    main(sys.argv[1:])
