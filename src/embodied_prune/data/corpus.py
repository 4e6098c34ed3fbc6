"""A synthetic corpus of robot instructions (manipulation and driving), deterministic per seed.

It gives the built-in tiny language model real structure to learn, so that pruning damage shows up
as a measurable change of its next-token distributions. Different seeds give different sentences
from the same grammar (use one seed for calibration and another for held-out evaluation).
"""

from __future__ import annotations

import random

COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
OBJECTS = ["cube", "mug", "bowl", "block", "bottle", "sponge", "drawer handle", "button", "peg", "plate"]
PLACES = ["shelf", "table", "tray", "box", "basket", "left bin", "right bin", "top drawer", "sink", "counter"]
PREPS = ["on", "in", "next to", "behind", "in front of", "above"]
DIRS = ["left", "right", "forward", "backward", "up", "down"]
LANES = ["left", "middle", "right"]
MANNERS = ["smoothly", "carefully", "quickly", "slowly", "gently"]

TEMPLATES = [
    "pick up the {color} {obj} and place it {prep} the {place}.",
    "move the gripper {n} cm {dir}, then close it {manner}.",
    "open the {place} and put the {color} {obj} inside.",
    "push the {color} {obj} {n} cm to the {dir2} without touching the {obj2}.",
    "drive at {speed} m/s in the {lane} lane and keep a gap of {gap} seconds.",
    "stay in the {lane} lane, do not change lanes, and drive {manner}.",
    "overtake the slow vehicle, then return to the {lane} lane at {speed} m/s.",
    "press the {color} button {manner} and release it after {n} seconds.",
    "rotate the {color} {obj} by {deg} degrees and set it down {prep} the {place}.",
    "if the {place} is full, put the {color} {obj} {prep} the {place2} instead.",
]


def _sentence(rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(
        color=rng.choice(COLORS),
        obj=rng.choice(OBJECTS),
        obj2=rng.choice(OBJECTS),
        place=rng.choice(PLACES),
        place2=rng.choice(PLACES),
        prep=rng.choice(PREPS),
        dir=rng.choice(DIRS),
        dir2=rng.choice(["left", "right"]),
        lane=rng.choice(LANES),
        manner=rng.choice(MANNERS),
        n=rng.randint(1, 30),
        speed=rng.randint(5, 30),
        gap=round(rng.uniform(0.5, 3.0), 1),
        deg=rng.choice([15, 30, 45, 90, 180]),
    )


def instruction_corpus(n_sentences: int = 2000, seed: int = 0) -> str:
    """``n_sentences`` instructions, one per line."""
    rng = random.Random(seed)
    return "\n".join(_sentence(rng) for _ in range(n_sentences)) + "\n"
