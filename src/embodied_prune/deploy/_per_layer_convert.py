"""llama.cpp's converter for a Llama whose decoder layers differ in shape (run as a script, see :mod:`.export`).

Why this file exists: llama.cpp's ``llama`` graph builds every layer with one head count and one MLP width, and its
converter's ``LlamaModel`` writes them as single numbers (and undoes the rotary permutation with one head count).
llama.cpp's ``deci`` architecture (DeciLM, Llama-3.1-Nemotron-51B: Llamas pruned to a different width per layer)
reads ``head_count``, ``head_count_kv`` and ``feed_forward_length`` as per-layer arrays and is otherwise the Llama
graph; but the converter's ``DeciModel`` only takes Nemotron's ``block_configs`` (every layer keeps all query heads,
MLP widths are multiples of 256). So we keep llama.cpp's own ``LlamaModel`` for everything (vocabulary, tensor
names, dtypes, writing) and change only the three per-layer numbers, the architecture tag, and the head counts the
rotary permutation of each layer's ``q_proj`` / ``k_proj`` uses.

Usage: ``python _per_layer_convert.py CONVERTER_DIR MODEL_DIR OUTFILE OUTTYPE`` (the shapes come from the model
folder's ``embodied_prune.json``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main(converter: str, model_dir: str, outfile: str, outtype: str) -> None:
    sys.path.insert(0, converter)
    sys.path.insert(1, str(Path(converter) / "gguf-py"))
    import gguf  # the converter's own gguf-py, matching the runtime
    import torch
    from conversion.llama import LlamaModel

    shapes = json.loads((Path(model_dir) / "embodied_prune.json").read_text())["layer_shapes"]

    class PerLayerLlama(LlamaModel):
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

    types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    logging.basicConfig(level=logging.INFO)
    with torch.inference_mode():
        model = PerLayerLlama(Path(model_dir), types[outtype], Path(outfile))
        model.write()


if __name__ == "__main__":
    main(*sys.argv[1:5])
