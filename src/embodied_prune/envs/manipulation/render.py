"""Fast offscreen rendering of a Meta-World scene on the CPU (EGL by default, see the package docstring).

Shadows, multisampling and reflections cost most of a software-rendered frame and carry nothing a
policy needs; they are switched off (about 10 → 100 frames/s at 96 px on one core here).
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace

import mujoco
import numpy as np

from ...errors import EmbodiedPruneError


@dataclass(frozen=True)
class CameraSpec:
    """A camera of the observation: a named model camera, or a free camera aimed at ``lookat``."""

    name: str
    size: int
    model_camera: str | None = None
    lookat: tuple[float, float, float] = (0.0, 0.65, 0.12)
    azimuth: float = -90.0
    elevation: float = -30.0
    distance: float = 1.15


# The third-person view faces the robot across the table from above, framed on the workspace (gripper,
# objects and goal markers in view, the arm's upper links cut off). One view from above cannot tell a
# goal's height from its distance (reach and pick-place put the goal up to 30 cm above the table), so a
# small second third-person view looks across the table from the side, low. The wrist view is
# Meta-World's gripper camera, looking down past the fingers.
FRONT = CameraSpec("front", 112, lookat=(0.0, 0.72, 0.05), elevation=-45.0, distance=0.95)
SIDE = CameraSpec("side", 64, lookat=(0.0, 0.72, 0.12), azimuth=180.0, elevation=-25.0, distance=0.85)
WRIST = CameraSpec("wrist", 64, model_camera="gripperPOV")
DEFAULT_CAMERAS: tuple[CameraSpec, ...] = (FRONT, SIDE, WRIST)
CAMERAS: dict[str, CameraSpec] = {c.name: c for c in DEFAULT_CAMERAS}


def cameras_for(config_cameras: Sequence[Sequence]) -> tuple[CameraSpec, ...]:
    """The camera specs a policy sees through: its config's ``[name, size, patch]`` entries, each placed
    as the named camera of :data:`CAMERAS` and rendered at the policy's image size."""
    unknown = [c[0] for c in config_cameras if c[0] not in CAMERAS]
    if unknown:
        raise EmbodiedPruneError(
            f"the policy asks for camera(s) {', '.join(unknown)}; this environment has {', '.join(CAMERAS)}."
        )
    return tuple(replace(CAMERAS[name], size=int(size)) for name, size, *_ in config_cameras)


def make_fast(model: mujoco.MjModel) -> None:
    """Switch off shadows and multisampling in ``model`` (visual settings only; physics is untouched)."""
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0
    model.light_castshadow[:] = 0


GOAL_MARKER_RADIUS = 0.035


def enlarge_goal_marker(model: mujoco.MjModel, radius: float = GOAL_MARKER_RADIUS) -> None:
    """Draw the task's visible goal marker (Meta-World's ``goal`` site, 2 cm) as a ball of ``radius`` m.

    At 128 px the 2-cm marker covers two or three pixels of the front view; the policy must see where the
    target is. Sites have no collision, so physics and success checks are untouched.
    """
    gid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
    if gid >= 0 and model.site_rgba[gid][3] > 0:
        model.site_size[gid] = radius


# Renderers still open when the interpreter exits. MuJoCo's EGL backend registers eglTerminate with atexit when it
# creates its first context; a renderer garbage-collected after that raises EGLError tracebacks from __del__. So
# the first renderer registers a handler that closes every open one, and atexit, last in first out, runs it before
# the display goes.
_OPEN: weakref.WeakSet = weakref.WeakSet()
_CLOSE_AT_EXIT = False


def _close_open_renderers() -> None:
    for r in list(_OPEN):
        r.close()


class SceneRenderer:
    """Renders the cameras of ``cameras`` from an ``MjData``; one GL context per image size. Closed by
    :meth:`close`, or at interpreter exit if still open."""

    def __init__(self, model: mujoco.MjModel, cameras: tuple[CameraSpec, ...] = DEFAULT_CAMERAS) -> None:
        global _CLOSE_AT_EXIT
        make_fast(model)
        enlarge_goal_marker(model)
        self.cameras = cameras
        self._renderers = {c.size: mujoco.Renderer(model, c.size, c.size) for c in cameras}
        _OPEN.add(self)
        if not _CLOSE_AT_EXIT:  # after the first context exists, so after the backend's own atexit entry
            atexit.register(_close_open_renderers)
            _CLOSE_AT_EXIT = True
        self._free: dict[str, mujoco.MjvCamera] = {}
        for c in cameras:
            if c.model_camera is None:
                cam = mujoco.MjvCamera()
                cam.type = mujoco.mjtCamera.mjCAMERA_FREE
                cam.lookat[:] = c.lookat
                cam.azimuth, cam.elevation, cam.distance = c.azimuth, c.elevation, c.distance
                self._free[c.name] = cam

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        """``{camera name: uint8 array (size, size, 3)}`` of the current state."""
        out = {}
        for c in self.cameras:
            r = self._renderers[c.size]
            r.update_scene(data, camera=self._free.get(c.name, c.model_camera))
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            out[c.name] = r.render().copy()
        return out

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers = {}
        _OPEN.discard(self)
