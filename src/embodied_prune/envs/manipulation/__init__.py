"""Language-conditioned manipulation on Meta-World (MuJoCo): the closed loop of the VLA policies.

The policy sees two RGB cameras (a third-person front view and the wrist camera) and the arm's own
state (end-effector position, gripper opening) — never Meta-World's object and goal coordinates, so
a policy must use its eyes. Meta-World's scripted experts provide demonstrations.
"""

import os

# MuJoCo picks its OpenGL back end when it is first imported: headless EGL unless the user chose.
os.environ.setdefault("MUJOCO_GL", "egl")
