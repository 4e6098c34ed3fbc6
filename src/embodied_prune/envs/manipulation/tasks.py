"""The Meta-World tasks of the VLA benchmark, each with its language instruction (one registry)."""

from __future__ import annotations

from dataclasses import dataclass

from ...registry import Registry


@dataclass(frozen=True)
class TaskSpec:
    """A manipulation task: the Meta-World environment, the instruction the policy reads, a step limit."""

    name: str
    env_name: str
    instruction: str
    max_steps: int = 150  # the scripted experts finish these tasks in 50–100 steps


TASKS: Registry[TaskSpec] = Registry("manipulation task")

for _spec in (
    TaskSpec("reach", "reach-v3", "reach the red ball with the gripper"),
    TaskSpec("push", "push-v3", "push the puck to the green ball"),
    TaskSpec("pick-place", "pick-place-v3", "pick up the puck and place it at the blue ball"),
    TaskSpec("door-open", "door-open-v3", "open the door by pulling its handle"),
    TaskSpec("drawer-close", "drawer-close-v3", "close the drawer"),
    TaskSpec("button-press", "button-press-topdown-v3", "press the button from above"),
):
    TASKS.add(_spec.name, _spec)

DEFAULT_TASKS: tuple[str, ...] = tuple(TASKS.names())


def resolve_tasks(names: str | list[str] | None) -> list[TaskSpec]:
    """Task specs for a comma-separated string or a list of names (None: all tasks)."""
    if names is None:
        return [TASKS.get(n) for n in DEFAULT_TASKS]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    return [TASKS.get(n) for n in names]
