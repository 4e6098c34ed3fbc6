"""Deployment to the runtime robots use: GGUF export for llama.cpp and llama.cpp as an inference backend.

- :mod:`.source` finds llama.cpp's own converter (``convert_hf_to_gguf.py``, its ``conversion`` package and
  ``gguf-py``), which the ``llama-cpp-python`` source distribution vendors.
- :mod:`.export` turns a dense, pruned or recovered checkpoint into a GGUF file through that converter and
  llama.cpp's quantiser.
- :mod:`.runtime` runs a GGUF file through ``llama_cpp.Llama``: greedy completions for closed-loop evaluation
  and timed prefill / decode for the benchmark.
"""
