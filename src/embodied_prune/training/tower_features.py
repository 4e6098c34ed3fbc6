"""A frozen vision tower's features of every demonstration frame, computed once and kept beside the frames.

A policy that sees through a frozen pretrained tower (``TinyVLAConfig.vision_tower``, e.g. DINOv2 ViT-S/14) would
spend most of each training step re-encoding the same frames (DINOv2 ViT-S/14 is 92 % of a query's FLOPs beside
the default 4-layer backbone). Its output
depends only on the frame and the tower's weights, so behaviour cloning reads the features from this cache instead
(the random-shift image augmentation is therefore off for such policies). Rollouts and evaluation run the tower
live on the rendered frame.

Layout, inside the demonstration folder (``FORMAT`` 1)::

    tower_features/<first 16 hex digits of the tower's SHA-256>/
        meta.json             {"format": 1, "tower": spec, "sha256": full hash, "dtype": "float16",
                               "cameras": [[name, size], ...], "hidden_size": 384, "episodes": [file, ...],
                               "wall_s": encoding seconds, "timed_frames": frames they cover, "device": ...}
        episodes/<file>.npz   per camera one float16 (T, patches, hidden) array, the episode's frames in order,
                              and ``_seconds``: the time they took to encode

The folder name versions the cache by the tower's weights (other weights, another folder). ``meta.json`` is written
last: a folder without it is unfinished, and a later call resumes it episode by episode (each episode's file is
written whole, by rename). Features are stored in float16 (half the disk and memory of float32; the rounding,
2⁻¹¹ of each value, is far below what behaviour cloning resolves).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..envs.manipulation.demos import DemoSet, check_cameras, demos_path, read_meta
from ..errors import EmbodiedPruneError
from ..io import atomic_write_text
from ..models.vla import VisionTower

FORMAT = 1
FOLDER = "tower_features"
SECONDS = "_seconds"  # beside the cameras in each episode's file: the time its frames took to encode


def cache_folder(demos: str | os.PathLike, tower: VisionTower) -> Path:
    """Where ``tower``'s features of the demonstration folder ``demos`` live."""
    return demos_path(demos) / FOLDER / tower.fingerprint()[:16]


def encode_frames(
    tower: VisionTower, frames: np.ndarray, device: torch.device | str = "cpu", batch_size: int = 32
) -> np.ndarray:
    """Tower features of uint8 ``frames`` (T, H, W, 3), ``batch_size`` at a time: float16 (T, patches, hidden)."""
    out = [
        tower(torch.from_numpy(frames[i : i + batch_size]), device).to(torch.float16).cpu().numpy()
        for i in range(0, len(frames), batch_size)
    ]
    return np.concatenate(out)


def build_cache(
    demos: str | os.PathLike,
    tower_spec: str,
    cameras: list[list],
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    progress: bool = True,
) -> Path:
    """Compute (or finish) the cache of ``tower_spec``'s features for ``cameras`` (``[name, size, …]`` entries) of
    every frame of the demonstration folder ``demos``; its folder. A finished cache is returned as it is."""
    demos = demos_path(demos)
    tower = VisionTower(tower_spec)
    folder = cache_folder(demos, tower)
    meta = read_meta(demos)
    check_cameras(DemoSet(meta, []), cameras, f"the demonstrations {demos}")
    episodes = meta["episodes"]
    names = [c[0] for c in cameras]
    if (folder / "meta.json").is_file():
        cached = json.loads((folder / "meta.json").read_text())
        if set(names) <= {c[0] for c in cached["cameras"]} and cached["episodes"] == [e["file"] for e in episodes]:
            return folder
        shutil.rmtree(folder)  # made for other cameras or other episodes: made again
    (folder / "episodes").mkdir(parents=True, exist_ok=True)
    todo = [e for e in episodes if not (folder / "episodes" / e["file"]).is_file()]
    frames = sum(e["length"] for e in todo)
    bar = tqdm(total=frames, unit="frame", desc=f"{tower_spec} features", disable=not progress)
    for e in todo:
        t0 = time.perf_counter()
        with np.load(demos / "episodes" / e["file"]) as z:
            arrays = {name: encode_frames(tower, z[name], device, batch_size) for name in names}
        arrays[SECONDS] = np.float64(time.perf_counter() - t0)
        final = folder / "episodes" / e["file"]
        tmp = final.with_name(f".{final.name}.tmp.npz")
        np.savez(tmp, **arrays)  # uncompressed: features barely compress, and loading stays fast
        os.replace(tmp, final)
        bar.update(e["length"])
    bar.close()
    seconds = []  # each episode's encoding time, summed over the runs that made the cache (resumed or not)
    for e in episodes:
        with np.load(folder / "episodes" / e["file"]) as z:
            if SECONDS in z.files:
                seconds.append((e["length"], float(z[SECONDS])))
    meta = {
        "format": FORMAT,
        "tower": tower_spec,
        "sha256": tower.fingerprint(),
        "dtype": "float16",
        "cameras": [[name, size] for name, size, *_ in cameras],
        "hidden_size": tower.hidden_size(),
        "episodes": [e["file"] for e in episodes],
        "wall_s": sum(t for _, t in seconds),
        "timed_frames": sum(n for n, _ in seconds),
        "device": str(device),
    }
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1) + "\n")
    return folder


def load_cache(demos: str | os.PathLike, tower_spec: str, cameras: list[list]) -> list[dict[str, np.ndarray]]:
    """The cached features of every episode of ``demos`` (in its meta.json's order): per episode, camera name →
    float16 (T, patches, hidden). Refuses, in a sentence, a cache that is missing or unfinished."""
    demos = demos_path(demos)
    folder = cache_folder(demos, VisionTower(tower_spec))
    if not (folder / "meta.json").is_file():
        raise EmbodiedPruneError(
            f"{demos} has no finished cache of {tower_spec}'s features ({folder}); build it with "
            "embodied_prune.training.tower_features.build_cache (train_bc does so itself)."
        )
    names = [c[0] for c in cameras]
    out = []
    for e in read_meta(demos)["episodes"]:
        with np.load(folder / "episodes" / e["file"]) as z:
            out.append({name: z[name] for name in names})
    return out


__all__ = ["FOLDER", "FORMAT", "build_cache", "cache_folder", "encode_frames", "load_cache"]
