"""Visual-token pruning inside a model whose forward is someone else's code (OpenVLA's remote code), by hooks.

:func:`~.forward.pruned_query` runs our own VLA's layers itself. A Prismatic / OpenVLA(-OFT) checkpoint
builds its sequence and decodes its actions in the code that ships with it, so there the same pruners act
through PyTorch forward hooks on its language model instead, nothing patched: :class:`TokenPruningHooks`
puts a pre-hook on the decoder stack (``language_model.model``) and on each decoder layer. Before each layer
of a forward that carries the image (the prefill), the pruner is asked which visual tokens go on, exactly as
in ``pruned_query``: the dropped tokens leave the layer's hidden states, its dense causal mask (rebuilt
from the kept tokens' original positions), its rotary angles and position ids (kept tokens keep their
original positions). After the stack, its output is put back at full length — dropped rows zero — so that
code reading hidden states by position (OpenVLA-OFT reads its action queries' rows by index) reads the
right rows; ``output_hidden_states`` entries are restored the same way.

Later forwards of cached decoding (one new token, no image) drop nothing; the hooks give them their
original position ids and, where the prompt has padding, a mask over each layer's own kept keys.
Each prefill is one pruner query (``select`` per layer, then ``finish``). The caller says where the
patches and the prompt are (:meth:`TokenPruningHooks.set_spans`) before each query.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import EmbodiedPruneError
from .forward import QueryState, QueryStats, _is_visual, _kept_rows


class TokenPruningHooks:
    """Hooks that let ``pruner`` drop visual tokens between the decoder layers of ``stack`` (a Llama/Qwen2-style
    decoder model: ``layers``, ``config``), until :meth:`remove`. With a pruner that keeps everything, nothing
    is changed (bit-identical outputs)."""

    def __init__(self, stack: nn.Module, pruner) -> None:
        impl = getattr(stack.config, "_attn_implementation", None)
        if impl not in ("sdpa", "eager"):
            raise EmbodiedPruneError(
                f"visual-token pruning gives each layer a dense attention mask, which {impl!r} attention does not "
                "take: load the model with attn_implementation='sdpa' (or 'eager')."
            )
        self.float_mask = impl == "eager"  # eager adds its mask to the scores; SDPA takes a boolean one
        self.stack, self.pruner = stack, pruner
        self.layers = list(stack.layers[: stack.config.num_hidden_layers])
        self.visual_span: tuple[int, int] | None = None
        self.instruction_span: tuple[int, int] | None = None
        self._query: dict | None = None  # the current prefill's bookkeeping
        self._cached: dict | None = None  # what later cached forwards need from the last prefill
        self._handles = [
            stack.register_forward_pre_hook(self._before_stack, with_kwargs=True),
            stack.register_forward_hook(self._after_stack, with_kwargs=True),
            *(
                layer.register_forward_pre_hook(self._layer_hook(i), with_kwargs=True)
                for i, layer in enumerate(self.layers)
            ),
        ]

    def set_spans(self, visual: tuple[int, int], instruction: tuple[int, int]) -> None:
        """Where the next query's patch tokens and prompt tokens lie in the stack's input sequence."""
        self.visual_span, self.instruction_span = visual, instruction

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # --- the stack ---------------------------------------------------------------------------------------------
    def _before_stack(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            n = ids.shape[1]
        else:
            n = embeds.shape[1]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        self._query = None
        if past == 0:  # a new sequence: a query when it carries the patches
            self._cached = None
            if self.visual_span is not None and self.visual_span[1] <= n:
                batch = (embeds if embeds is not None else ids).shape[0]
                if batch != 1:
                    raise ValueError("token pruning keeps a different token set per query: one observation at a time.")
                mask = kwargs.get("attention_mask")
                padded = mask is not None and mask.dim() == 2
                valid = mask[0, -n:].bool().cpu() if padded else torch.ones(n, dtype=torch.bool)
                self._query = {
                    "n": n,
                    "rows": torch.arange(n),
                    "key_valid": valid,
                    "counts": [],  # visual tokens per layer
                    "row_history": [],  # each layer's input rows (original indices)
                    "kept": {},  # key_valid of each pruned layer's rows, for cached decoding
                }
            return None
        if self._cached is None:
            return None
        # cached decoding after a pruned prefill: the new tokens' place, for their positions and masks
        start = self._cached["n"] + self._cached["decoded"]
        self._cached["decoded"] += n
        self._cached["q"] = n
        if kwargs.get("position_ids") is None:
            # layer 0's cache may be shorter than the sequence, so the stack would count positions from it
            kwargs["position_ids"] = torch.arange(start, start + n, device=self._device()).unsqueeze(0)
            return args, kwargs
        return None

    def _after_stack(self, module, args, kwargs, output):
        q = self._query
        if q is None or q["rows"].numel() == q["n"]:
            self._finish()
            return None
        output.last_hidden_state = self._full(output.last_hidden_state, q["rows"], q["n"])
        if getattr(output, "hidden_states", None) is not None:
            output.hidden_states = tuple(self._restore(h, q) for h in output.hidden_states)
        self._finish()
        return output

    def _finish(self) -> None:
        q = self._query
        if q is None:
            return
        self.pruner.finish(QueryStats(q["counts"]))
        self._cached = {"n": q["n"], "decoded": 0, "q": 0, "kept": q["kept"]}
        self._query = None

    @staticmethod
    def _full(h: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
        if h.shape[1] == n:
            return h
        out = h.new_zeros(h.shape[0], n, *h.shape[2:])
        out[:, rows.to(h.device)] = h
        return out

    def _restore(self, h: torch.Tensor, q: dict) -> torch.Tensor:
        """One ``output_hidden_states`` entry at full length (its rows: the last layer input of its length)."""
        if h.shape[1] == q["n"]:
            return h
        for rows in reversed(q["row_history"]):
            if rows.numel() == h.shape[1]:
                return self._full(h, rows, q["n"])
        return h

    def _device(self) -> torch.device:
        return next(self.stack.parameters()).device

    # --- each layer ----------------------------------------------------------------------------------------------
    def _layer_hook(self, i: int):
        def hook(module, args, kwargs):
            if self._query is not None:
                return self._prefill_layer(i, module, args, kwargs)
            if self._cached is not None and self._cached["kept"]:
                return self._cached_layer(i, args, kwargs)
            return None

        return hook

    def _prefill_layer(self, i: int, layer, args, kwargs):
        q = self._query
        hidden = args[0] if args else kwargs["hidden_states"]
        device = hidden.device
        positions = q["rows"].to(device)
        key_valid = q["key_valid"][q["rows"]].to(device)
        pe_full = kwargs["position_embeddings"]
        pe = pe_full if q["rows"].numel() == q["n"] else (pe_full[0][:, positions], pe_full[1][:, positions])
        state = QueryState(
            i,
            len(self.layers),
            hidden,
            positions,
            key_valid,
            self.visual_span,
            self.instruction_span,
            pe,
            layer,
            self.visual_span[1] - self.visual_span[0],
        )
        keep = self.pruner.select(state)
        if keep is not None:
            sel = _kept_rows(positions, self.visual_span, keep)
            hidden = hidden[:, sel]
            q["rows"] = q["rows"][sel.cpu()]
        q["row_history"].append(q["rows"])
        q["counts"].append(int(_is_visual(q["rows"], self.visual_span).sum()))
        if q["rows"].numel() == q["n"]:  # nothing dropped yet: the layer runs as the model called it
            return None
        rows = q["rows"].to(device)
        q["kept"][i] = q["key_valid"][q["rows"]]
        allowed = (rows[None, :] <= rows[:, None]) & q["kept"][i].to(device)[None, :]
        kwargs = {
            **kwargs,
            "attention_mask": self._mask(allowed, hidden.dtype),
            "position_embeddings": (pe_full[0][:, rows], pe_full[1][:, rows]),
        }
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"][:, rows]
        if args:
            return (hidden, *args[1:]), kwargs
        return (), {**kwargs, "hidden_states": hidden}

    def _cached_layer(self, i: int, args, kwargs):
        """A cached forward after a pruned prefill: its mask over this layer's own keys (the prefill's kept
        keys, then every token decoded since), or none when nothing is padding."""
        c = self._cached
        kept = c["kept"].get(i)
        if kept is None:  # this layer saw the whole prefill: the model's own mask fits its cache
            return None
        if bool(kept.all()) and c["q"] == 1:  # one new token may read every key: no mask needed
            return args, {**kwargs, "attention_mask": None}
        hidden = args[0] if args else kwargs["hidden_states"]
        n_new, done = c["q"], c["decoded"] - c["q"]
        keys = torch.cat([kept, torch.ones(done + n_new, dtype=torch.bool)]).to(hidden.device)
        causal = torch.ones(n_new, keys.numel(), dtype=torch.bool, device=hidden.device)
        causal[:, kept.numel() + done :] = torch.ones(n_new, n_new, dtype=torch.bool, device=hidden.device).tril()
        return args, {**kwargs, "attention_mask": self._mask(causal & keys[None, :], hidden.dtype)}

    def _mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(1, 1, q, k) attention mask from the boolean ``allowed``, in the form the layers' attention takes."""
        if not self.float_mask:
            return allowed[None, None]
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )[None, None]


__all__ = ["TokenPruningHooks"]
