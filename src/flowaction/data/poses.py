"""The actions of the articulated benchmark: joint angles of a 2D figure over time.

A pose is a dict of angles in radians: arms and legs measured on screen from hanging straight
down, positive towards the figure's facing direction; ``torso`` leans forward from upright and
``neck`` tilts the head further; knees bend the shin backwards from the thigh, elbows the forearm
forwards from the upper arm; ``lift`` raises the pelvis in figure heights (a jump), negative
lowers it (sitting). Each action is a function of the clip's time ``t`` in [0, 1], its phase, cycles
and amplitude, which are drawn from the same distributions for every class. The action is only in
how the joints move: where the figure stands, its size, facing, drift and clothes are drawn alike.

Walking and running are in place (with the drift every class has): a walker that crossed the frame
would name its class by global motion, which this benchmark rules out.

Two pairs are each other's time reversal (``sit-down`` / ``stand-up``, ``raise-arms`` /
``lower-arms``): their progress runs from ``a`` to ``b`` or from ``b`` to ``a`` with the same
``a``, ``b``, so any single frame of one class has the distribution of the other's.
"""
from __future__ import annotations

import math
from typing import Callable

JOINTS = ("torso", "neck", "arm_near", "elbow_near", "arm_far", "elbow_far", "leg_near", "knee_near",
          "leg_far", "knee_far", "lift")
Pose = dict[str, float]


def _rest() -> Pose:
    return {"torso": 0.04, "neck": 0.0, "arm_near": 0.12, "elbow_near": 0.15, "arm_far": -0.08, "elbow_far": 0.15,
            "leg_near": 0.05, "knee_near": 0.05, "leg_far": -0.05, "knee_far": 0.05, "lift": 0.0}


def _cycle(t: float, phase: float, cycles: float) -> float:
    return 2 * math.pi * cycles * t + phase


def walk(t: float, phase: float, cycles: float, amp: float) -> Pose:
    s = math.sin(_cycle(t, phase, cycles))
    return {**_rest(), "leg_near": 0.45 * amp * s, "leg_far": -0.45 * amp * s,
            "knee_near": 0.15 + 0.35 * amp * max(0.0, -s), "knee_far": 0.15 + 0.35 * amp * max(0.0, s),
            "arm_near": -0.4 * amp * s, "arm_far": 0.4 * amp * s, "elbow_near": 0.3, "elbow_far": 0.3,
            "lift": 0.015 * abs(s)}


def run(t: float, phase: float, cycles: float, amp: float) -> Pose:
    s = math.sin(_cycle(t, phase, cycles))
    return {**_rest(), "torso": 0.25, "leg_near": 0.85 * amp * s, "leg_far": -0.85 * amp * s,
            "knee_near": 0.4 + 0.9 * amp * max(0.0, -s), "knee_far": 0.4 + 0.9 * amp * max(0.0, s),
            "arm_near": -0.8 * amp * s, "arm_far": 0.8 * amp * s, "elbow_near": 1.5, "elbow_far": 1.5,
            "lift": 0.05 * abs(s)}


def jump(t: float, phase: float, cycles: float, amp: float) -> Pose:
    up = max(0.0, math.sin(_cycle(t, phase, cycles)))
    crouch = 1.0 - up
    return {**_rest(), "leg_near": 0.35 * crouch, "leg_far": 0.3 * crouch, "knee_near": 0.9 * crouch,
            "knee_far": 0.9 * crouch, "torso": 0.15 + 0.25 * crouch, "arm_near": 0.3 + 0.9 * amp * up,
            "arm_far": 0.2 + 0.9 * amp * up, "lift": 0.2 * amp * up}


def jumping_jacks(t: float, phase: float, cycles: float, amp: float) -> Pose:
    open_ = 0.5 - 0.5 * math.cos(_cycle(t, phase, cycles))
    return {**_rest(), "arm_near": 0.15 + 2.6 * amp * open_, "arm_far": -0.15 - 2.6 * amp * open_,
            "elbow_near": 0.1, "elbow_far": 0.1, "leg_near": 0.05 + 0.4 * amp * open_,
            "leg_far": -0.05 - 0.4 * amp * open_, "lift": 0.04 * math.sin(math.pi * open_)}


def wave_one(t: float, phase: float, cycles: float, amp: float) -> Pose:
    s = math.sin(_cycle(t, phase, cycles))
    return {**_rest(), "arm_near": 2.5, "elbow_near": 0.6 + 0.5 * amp * s}


def wave_two(t: float, phase: float, cycles: float, amp: float) -> Pose:
    s = math.sin(_cycle(t, phase, cycles))
    return {**_rest(), "arm_near": 2.5, "elbow_near": 0.6 + 0.5 * amp * s, "arm_far": 2.4,
            "elbow_far": 0.6 + 0.5 * amp * s}


def clap(t: float, phase: float, cycles: float, amp: float) -> Pose:
    s = math.sin(_cycle(t, phase, cycles))
    return {**_rest(), "arm_near": 1.2 + 0.3 * amp * s, "elbow_near": 1.0 - 0.6 * amp * s,
            "arm_far": 1.2 + 0.3 * amp * s, "elbow_far": 1.0 - 0.6 * amp * s}


def box(t: float, phase: float, cycles: float, amp: float) -> Pose:
    c = math.cos(_cycle(t, phase, cycles))
    return {**_rest(), "torso": 0.12, "arm_near": 1.45, "elbow_near": 0.1 + 1.7 * amp * (0.5 + 0.5 * c),
            "arm_far": 1.45, "elbow_far": 0.1 + 1.7 * amp * (0.5 - 0.5 * c), "knee_near": 0.2, "knee_far": 0.2}


def bend(t: float, phase: float, cycles: float, amp: float) -> Pose:
    lean = 0.1 + 1.0 * amp * (0.5 - 0.5 * math.cos(_cycle(t, phase, cycles)))
    # the arms hang from shoulders that move forward with the lean
    return {**_rest(), "torso": lean, "arm_near": 0.1 + 0.3 * lean, "arm_far": 0.3 * lean - 0.05, "neck": 0.2 * lean}


def kick(t: float, phase: float, cycles: float, amp: float) -> Pose:
    up = max(0.0, math.sin(_cycle(t, phase, cycles)))
    return {**_rest(), "leg_near": 0.1 + 1.2 * amp * up, "knee_near": 0.9 * (1.0 - up) * min(1.0, 4 * up + 0.3),
            "arm_near": -0.5 * up, "arm_far": 0.6 * up, "torso": -0.12 * up}


def _sit(p: float) -> Pose:
    """Progress ``p`` of sitting down: 0 standing, 1 seated (thighs level, shins upright)."""
    return {**_rest(), "leg_near": 1.5 * p, "leg_far": 1.45 * p, "knee_near": 1.5 * p, "knee_far": 1.45 * p,
            "torso": 0.05 + 0.3 * p, "arm_near": 0.12 + 0.5 * p, "arm_far": -0.08 + 0.5 * p, "lift": -0.2 * p}


def _raise(q: float) -> Pose:
    """Progress ``q`` of raising both arms sideways-forward: 0 down, 1 overhead."""
    return {**_rest(), "arm_near": 0.12 + 2.8 * q, "arm_far": 0.05 + 2.8 * q, "elbow_near": 0.1, "elbow_far": 0.1}


def progress(t: float, start: float, end: float, forward: bool) -> float:
    """Progress at time ``t`` in [0, 1], from ``start`` to ``end`` (or back with ``forward`` False)."""
    return start + (end - start) * (t if forward else 1.0 - t)


def sit_down(t: float, start: float, end: float) -> Pose:
    return _sit(progress(t, start, end, True))


def stand_up(t: float, start: float, end: float) -> Pose:
    return _sit(progress(t, start, end, False))


def raise_arms(t: float, start: float, end: float) -> Pose:
    return _raise(progress(t, start, end, True))


def lower_arms(t: float, start: float, end: float) -> Pose:
    return _raise(progress(t, start, end, False))


#: periodic actions: pose(t, phase, cycles, amplitude)
PERIODIC: dict[str, Callable[..., Pose]] = {
    "walk": walk, "run": run, "jump": jump, "jumping-jacks": jumping_jacks, "wave-one-hand": wave_one,
    "wave-two-hands": wave_two, "clap": clap, "box": box, "bend": bend, "kick": kick,
}
#: one-way actions: pose(t, start, end); the pairs are each other's time reversal
ONE_WAY: dict[str, Callable[..., Pose]] = {
    "sit-down": sit_down, "stand-up": stand_up, "raise-arms": raise_arms, "lower-arms": lower_arms,
}
ACTION_NAMES: tuple[str, ...] = tuple(PERIODIC) + tuple(ONE_WAY)
TIME_REVERSED_PAIRS: tuple[tuple[str, str], ...] = (("sit-down", "stand-up"), ("raise-arms", "lower-arms"))
