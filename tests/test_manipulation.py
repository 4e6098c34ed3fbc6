"""The Meta-World manipulation environment: headless rendering, observations, safety monitor, demos."""

from __future__ import annotations

import json

import mujoco
import numpy as np
import pytest

from embodied_prune.envs.manipulation.demos import (
    DEMO_STREAM,
    EVAL_STREAM,
    NOISE_RHO,
    generate_demos,
    load_demos,
    motion_noise,
    record_episode,
    scene_seed,
)
from embodied_prune.envs.manipulation.env import ManipulationEnv
from embodied_prune.envs.manipulation.render import CAMERAS, cameras_for
from embodied_prune.envs.manipulation.tasks import TASKS, resolve_tasks
from embodied_prune.errors import EmbodiedPruneError


@pytest.fixture
def reach():
    env = ManipulationEnv("reach")
    yield env
    env.close()


def test_headless_rendering_shows_the_scene_and_its_randomisation(reach):
    a, _ = reach.reset(seed=1)
    assert set(a) == {"front", "side", "wrist", "proprio"}  # no object or goal coordinates
    assert a["front"].shape == (112, 112, 3) and a["side"].shape == a["wrist"].shape == (64, 64, 3)
    assert a["front"].dtype == np.uint8 and min(a[c].std() for c in ("front", "side", "wrist")) > 5
    assert a["proprio"].shape == (4,)
    again, _ = reach.reset(seed=1)
    other, _ = reach.reset(seed=2)
    assert np.array_equal(a["front"], again["front"])  # a seed is a scene
    assert np.abs(a["front"].astype(int) - other["front"].astype(int)).sum() > 0  # the goal moved, visibly
    assert np.abs(a["side"].astype(int) - other["side"].astype(int)).sum() > 0


def test_privileged_state_is_the_object_and_goal_and_never_observed(reach):
    obs, _ = reach.reset(seed=4)
    priv = reach.privileged()
    assert np.allclose(priv[:3], reach._mw._get_pos_objects()[:3], atol=1e-5)
    assert np.allclose(priv[3:], reach._mw._target_pos, atol=1e-5)
    assert set(obs) == {"front", "side", "wrist", "proprio"}  # a training target only, never an input


def test_cameras_follow_the_policy_config():
    cams = cameras_for([["front", 128, 8], ["wrist", 32, 8]])  # an older two-camera policy
    assert [(c.name, c.size) for c in cams] == [("front", 128), ("wrist", 32)]
    assert cams[0].lookat == CAMERAS["front"].lookat
    env = ManipulationEnv("reach", cameras=cams)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["front"].shape == (128, 128, 3) and obs["wrist"].shape == (32, 32, 3) and "side" not in obs
    finally:
        env.close()
    with pytest.raises(EmbodiedPruneError, match=r"camera\(s\) top; this environment has front, side, wrist"):
        cameras_for([["top", 64, 8]])


def test_every_seed_gives_a_valid_scene():
    # pick-place redraws until puck and goal are 15 cm apart; a frozen invalid draw used to hang reset
    env = ManipulationEnv("pick-place")
    try:
        for seed in range(40):
            env.reset(seed=seed)
            mw = env._mw
            assert np.linalg.norm(mw.obj_init_pos[:2] - mw._target_pos[:2]) >= 0.15
    finally:
        env.close()


def test_proprioception_is_the_end_effector_and_gripper(reach):
    obs, _ = reach.reset(seed=0)
    hand = reach._mw.get_endeff_pos()
    assert np.allclose(obs["proprio"][:3], hand, atol=1e-5)
    assert 0.0 <= obs["proprio"][3] <= 1.0


def test_blank_images_are_black():
    env = ManipulationEnv("push", blank_images=True)
    try:
        obs, _ = env.reset(seed=0)
        assert not any(obs[c].any() for c in ("front", "side", "wrist"))
        assert obs["proprio"].any()
    finally:
        env.close()


def test_expert_succeeds_without_violations(reach):
    reach.reset(seed=3)
    seen = {k: 0 for k in ("table_contact", "joint_limit", "fast_object")}
    for _ in range(reach.max_steps):
        _, _, success, truncated, info = reach.step(reach.expert_action())
        for k, v in info["safety"].items():
            seen[k] += v
        if success or truncated:
            break
    assert success
    assert seen == {"table_contact": 0, "joint_limit": 0, "fast_object": 0}


def test_safety_monitor_catches_each_planted_violation(reach):
    m, d = reach.mj_model, reach.mj_data
    reach.reset(seed=0)
    assert not any(reach.safety.events(d).values())
    # the hand driven down into the table
    d.mocap_pos[0] = [0.0, 0.6, -0.1]
    hits = []
    for _ in range(100):
        mujoco.mj_step(m, d)
        hits.append(reach.safety.events(d)["table_contact"])
    assert any(hits)
    # an arm joint at its limit
    reach.reset(seed=0)
    j = reach.safety.monitored[0]
    d.qpos[m.jnt_qposadr[j]] = m.jnt_range[j][1] - 0.01
    mujoco.mj_forward(m, d)
    assert reach.safety.events(d) == {"table_contact": False, "joint_limit": True, "fast_object": False}
    # an object flung at 2 m/s
    reach.reset(seed=0)
    dof = m.jnt_dofadr[m.body_jntadr[m.body("obj").id]]
    d.qvel[dof : dof + 3] = [0.0, 2.0, 0.0]
    mujoco.mj_forward(m, d)
    assert reach.safety.events(d) == {"table_contact": False, "joint_limit": False, "fast_object": True}


def test_demonstrations_round_trip(tmp_path):
    out = generate_demos(tmp_path / "demos", tasks="reach,drawer-close", episodes=1, progress=False)
    demos = load_demos(out)
    assert [e["task"] for e in demos.episodes] == ["reach", "drawer-close"]
    for e, m in zip(demos.episodes, demos.meta["episodes"], strict=True):
        t = m["length"]
        assert e["front"].shape == (t, 112, 112, 3) and e["wrist"].shape == e["side"].shape == (t, 64, 64, 3)
        assert e["proprio"].shape == (t, 4) and e["action"].shape == (t, 4) and e["privileged"].shape == (t, 6)
        # the goal does not move in reach / drawer-close; the recorded one is the scene's
        assert np.allclose(e["privileged"][:, 3:], e["privileged"][0, 3:])
        assert np.abs(e["action"]).max() <= 1.0
        assert m["seed"] == scene_seed(0, m["task"], 0, DEMO_STREAM)
    assert json.loads((out / "meta.json").read_text())["tasks"]["reach"] == TASKS.get("reach").instruction
    with pytest.raises(EmbodiedPruneError, match="not empty"):
        generate_demos(out, tasks="reach", episodes=1, progress=False)


def test_motion_noise_is_a_correlated_drift_of_the_stated_scale():
    assert not motion_noise(np.random.default_rng(0), 50, 0.0).any()
    n = motion_noise(np.random.default_rng(0), 20000, 0.1)
    assert n.shape == (20000, 4) and not n[:, 3].any()  # the gripper is never perturbed
    lag1 = np.mean([np.corrcoef(n[1:, k], n[:-1, k])[0, 1] for k in range(3)])
    assert abs(lag1 - NOISE_RHO) < 0.03
    assert np.allclose(n[:, :3].std(0), 0.1 / np.sqrt(1 - NOISE_RHO**2), rtol=0.1)


def test_noisy_demonstrations_keep_the_experts_clean_labels():
    env = ManipulationEnv("reach", cameras=())
    seed = scene_seed(0, "reach", 0, DEMO_STREAM)
    clean, _ = record_episode(env, seed)
    noisy, _ = record_episode(env, seed, noise=0.1)
    assert np.allclose(clean["proprio"][0], noisy["proprio"][0])
    assert not np.allclose(clean["proprio"][5], noisy["proprio"][5])  # the arm strayed from the clean path
    # replaying label + the episode's noise visits the same states, and at each the label is the expert's
    perturb = motion_noise(np.random.default_rng(seed), env.max_steps, 0.1)
    env.reset(seed=seed)
    for t, label in enumerate(noisy["action"]):
        assert np.allclose(env.expert_action(), label)
        assert np.allclose(env.privileged(), noisy["privileged"][t])
        env.step(label + perturb[t])
    env.close()
    with pytest.raises(EmbodiedPruneError, match=r"noise .* must lie in \[0, 1\]"):
        generate_demos("/nonexistent/never-written", tasks="reach", episodes=1, noise=2.0, progress=False)


def test_demo_and_evaluation_scenes_never_coincide():
    demo = {scene_seed(0, t, i, DEMO_STREAM) for t in TASKS.names() for i in range(500)}
    evals = {scene_seed(s, t, i, EVAL_STREAM) for s in range(3) for t in TASKS.names() for i in range(100)}
    assert not demo & evals


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(EmbodiedPruneError, match="unknown manipulation task 'fly'"):
        resolve_tasks("reach,fly")
    with pytest.raises(EmbodiedPruneError, match=r"no meta\.json"):
        load_demos(tmp_path)


def test_calibration_frames_keep_evenly_spaced_steps_and_the_builtin_set_loads(tmp_path, demos):
    from embodied_prune.envs.manipulation.demos import BUILTIN_FRAMES, calibration_frames

    full = load_demos(demos)
    out = calibration_frames(demos, tmp_path / "frames", per_episode=3, note="test")
    small = load_demos(out)
    n = full.meta["episodes"][0]["length"]
    steps = np.unique(np.linspace(0, n - 1, 3).round().astype(int))
    assert small.meta["episodes"][0]["length"] == len(steps) == 3
    assert np.array_equal(small.episodes[0]["front"], full.episodes[0]["front"][steps])
    assert small.meta["generator"]["calibration_frames"] == 3 and small.meta["generator"]["source"] == "test"
    shipped = load_demos(BUILTIN_FRAMES)  # in the package: every task, all three cameras
    assert sorted(e["task"] for e in shipped.episodes) == sorted(TASKS.names())
    assert [c["name"] for c in shipped.meta["cameras"]] == ["front", "side", "wrist"]


def test_an_environment_left_open_ends_its_process_without_egl_tracebacks():
    """MuJoCo's EGL display goes at interpreter exit; renderers still open are closed before it, not in __del__."""
    import subprocess
    import sys

    script = (
        "from embodied_prune.envs.manipulation.env import ManipulationEnv\n"
        "env = ManipulationEnv('reach')\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(obs['front'].shape)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "(112, 112, 3)" in proc.stdout, proc.stderr[-2000:]
    assert "Exception ignored" not in proc.stderr and "EGLError" not in proc.stderr, proc.stderr[-2000:]
