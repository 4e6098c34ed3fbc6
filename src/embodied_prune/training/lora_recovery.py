"""LoRA recovery of a pruned VLA policy: the trained alternative to GLUESTICK, at a matched parameter budget.

PEFT's LoRA adapters (rank r on every linear layer of the backbone's decoder layers, the ones pruning
touched) are trained by behaviour cloning on expert demonstrations while the pruned weights stay frozen.
A trained adapter adds ``scaling · B A`` beside the frozen weight — the same form as a GLUESTICK
correction — so it is saved as GLUESTICK factors (``V = Aᵀ``, ``U = scaling · Bᵀ``; ``method`` "lora" in
the file's metadata) and loaded, evaluated, cast and timed by exactly the same code. It is never merged
into the weight: that would fill the sparse (e.g. 2:4) pattern in.

Parameter budgets match GLUESTICK's: a rank-r adapter on a ``[d_out, d_in]`` layer holds r·(d_in + d_out)
values, as a rank-r correction does; :func:`rank_for_budget` gives the uniform rank that fits a budget.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import EmbodiedPruneError
from ..models.lowrank import GluestickLinear, LayerFactors, save_factors


@dataclass
class LoRASettings:
    """LoRA recovery recipe (behaviour cloning of the adapters only)."""

    rank: int = 8
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0


def target_layers(model) -> dict[str, object]:
    """The linear layers of a policy's backbone decoder layers, by qualified name (what pruning touches)."""
    from ..models.adapters import adapter_for

    adapter = adapter_for(model)
    return {name: model.get_submodule(name) for name in adapter.linear_names(model)}


def rank_for_budget(model, budget: float) -> int:
    """The largest uniform LoRA rank whose extra parameters stay within ``budget`` × the targeted layers'."""
    layers = target_layers(model).values()
    base = sum(m.weight.numel() for m in layers)
    per_rank = sum(m.in_features + m.out_features for m in layers)
    rank = int(budget * base) // per_rank
    if rank < 1:
        raise EmbodiedPruneError(
            f"a budget of {budget:g} allows no rank-1 LoRA adapter on every layer ({per_rank:,} parameters); "
            "raise the budget."
        )
    return rank


def adapter_factors(peft_model, names: list[str]) -> list[LayerFactors]:
    """Each trained adapter as GLUESTICK factors: ``x @ V @ U`` equals the adapter's output."""
    out = []
    for name in names:
        module = peft_model.base_model.model.get_submodule(name)
        a = module.lora_A["default"].weight.detach().float()  # [r, d_in]
        b = module.lora_B["default"].weight.detach().float()  # [d_out, r]
        scaling = float(module.scaling["default"])
        out.append(LayerFactors(name, a.shape[1], b.shape[0], a.T.contiguous(), (scaling * b.T).contiguous()))
    return out


def lora_recover(
    pruned: str | os.PathLike,
    demos: str | os.PathLike,
    out: str | os.PathLike,
    settings: LoRASettings | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train LoRA adapters on the pruned policy at ``pruned`` by behaviour cloning on ``demos``; save the
    pruned checkpoint plus the adapters (as GLUESTICK factors) to ``out``. Returns ``out``."""
    from peft import LoraConfig, get_peft_model

    from ..envs.manipulation.demos import check_cameras, load_demos
    from ..models.checkpoint import read_side_file, resolve_model_path, save_model, stored_dtype
    from ..models.vla import load_vla
    from .manipulation import DemoSteps, fit
    from .runs import prepare_run

    s = settings or LoRASettings()
    if s.rank < 1 or s.steps < 1:
        raise EmbodiedPruneError(f"LoRA recovery needs rank >= 1 and steps >= 1, got {s.rank} and {s.steps}.")
    scratch = prepare_run(out, overwrite, s.seed)
    model, tokenizer = load_vla(pruned)
    if any(isinstance(m, GluestickLinear) for m in model.modules()):  # LoRA would train around old factors
        raise EmbodiedPruneError(f"{pruned} already carries GLUESTICK factors; pass the pruned checkpoint.")
    history = read_side_file(resolve_model_path(pruned)).get("history", [])
    names = list(target_layers(model))
    config = LoraConfig(r=s.rank, lora_alpha=s.rank, target_modules=names, lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(model, config)
    demo_set = load_demos(demos)
    check_cameras(demo_set, model.config.cameras, f"the demonstrations {demos}")
    data = DemoSteps(demo_set, tokenizer, model.config.chunk, model.config.instruction_len, 0.0, s.seed)
    t0 = time.time()
    fit(peft_model, data, s.steps, s.batch_size, s.learning_rate, s.seed, scratch, progress)
    factors = adapter_factors(peft_model, names)
    base = peft_model.unload()  # the frozen pruned weights, untouched by training
    record = {
        "op": "recover",
        "method": "lora",
        **asdict(s),
        "demos": str(demos),
        "samples": len(data),
        "layers": len(factors),
        "extra_parameters": sum(f.extra_parameters for f in factors),
        "overhead": sum(f.extra_parameters for f in factors) / sum(f.d_in * f.d_out for f in factors),
        "wall_s": time.time() - t0,
    }
    return save_model(
        base,
        out,
        tokenizer,
        history=[*history, record],
        overwrite=overwrite,
        extra={"factors": lambda folder: save_factors(factors, folder, method="lora")},
        dtype=stored_dtype(pruned),  # the pruned weights stay as they were stored; only the adapters are new
    )


@dataclass
class TextLoRASettings:
    """LoRA recovery of a pruned causal LM on real text, after LLM-Pruner (rank 8, alpha 16, every decoder
    projection); steps and batch are sized for our 2-core budget rather than LLM-Pruner's two Alpaca epochs."""

    rank: int = 8
    alpha: int = 16
    steps: int = 100
    batch_size: int = 4
    seq_len: int = 128
    learning_rate: float = 3e-4
    seed: int = 0


def lora_recover_text(model, token_ids, settings: TextLoRASettings | None = None, progress: bool = True):
    """Fine-tune LoRA adapters (PEFT) on every decoder projection of a pruned causal LM by next-token loss on
    ``token_ids`` (one long row of ids, windows drawn at seeded random offsets), then merge them.

    Merging is right here and wrong for :func:`lora_recover`: a structured-pruned model is dense, so the
    merged weight is the recovered model itself; an unstructured (2:4) one would lose its zeros. Returns the
    merged model (trained in float32, the caller's dtype restored) and the mean loss of the first and last
    tenth of the steps."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from ..models.adapters import adapter_for

    s = settings or TextLoRASettings()
    if s.rank < 1 or s.steps < 1:
        raise EmbodiedPruneError(f"LoRA recovery needs rank >= 1 and steps >= 1, got {s.rank} and {s.steps}.")
    if token_ids.numel() <= s.seq_len:
        raise EmbodiedPruneError(f"LoRA recovery needs more than {s.seq_len} tokens of text; pass a longer text.")
    dtype = model.dtype
    model = model.float()
    names = adapter_for(model).linear_names(model)
    config = LoraConfig(r=s.rank, lora_alpha=s.alpha, target_modules=names, lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(model, config)
    peft_model.train()
    optimiser = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=s.learning_rate)
    gen = torch.Generator().manual_seed(s.seed)
    losses = []
    for _ in tqdm(range(s.steps), desc="LoRA recovery", disable=not progress, leave=False):
        starts = torch.randint(0, token_ids.numel() - s.seq_len, (s.batch_size,), generator=gen)
        batch = torch.stack([token_ids[i : i + s.seq_len] for i in starts.tolist()]).to(model.device)
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    merged = peft_model.merge_and_unload().to(dtype).eval()
    tenth = max(1, len(losses) // 10)
    return merged, (sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth)


__all__ = [
    "LoRASettings",
    "TextLoRASettings",
    "adapter_factors",
    "lora_recover",
    "lora_recover_text",
    "rank_for_budget",
    "target_layers",
]
