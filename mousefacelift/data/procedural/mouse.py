"""The procedural mouse: an articulated body of analytic primitives, its motion, and exact ray casting.

Body frame (the reference's proxy): x left, y back, z up, millimetres, origin on the floor under
the torso centre; the nose points along -y. A pose (:class:`PoseTrack`, one row per frame) places
the body in the Z-up world (floor z = 0) and articulates it:

* ``x, y, heading``: body origin on the floor (~ centre of mass) and the direction of -y_body
  in the world, counter-clockwise from +X (radians);
* ``pitch``: rearing, the front group (torso, head, ears, fore legs) pitched up about a pivot
  near the haunch (radians; 0 = on all fours);
* ``head_yaw``: head and ears turned about the neck; ``tail_swing``: sideways bend of the tail
  (radians at the tip); ``gait_phase``: trotting phase of the paws (radians).

The surface is a union of ellipsoids (torso, haunch, head, flattened ears) and capsules (legs,
the tapered tail as a chain). For rendering each capsule is split into a finite cylinder and two
spheres, so every piece is one quadric ``(p - c)^T G (p - c) = k`` with an optional axial range
``lo <= (p - c) . u <= hi`` (:mod:`.geometry`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from ...configs import bounded, check_ranges

KEYPOINT_NAMES = (
    "left_ear_tip", "right_ear_tip", "nose", "neck", "body_middle", "tail_root", "tail_middle",
    "tail_end", "left_paw", "left_paw_end", "left_elbow", "left_shoulder", "right_paw",
    "right_paw_end", "right_elbow", "right_shoulder", "left_foot", "left_knee", "left_hip",
    "right_foot", "right_knee", "right_hip")
Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class BodyConfig:
    """Body proportions (body frame, mm; left-side parts, the right side mirrors x) and colours."""
    torso_center: Vec3 = (0.0, 0.0, 13.0)
    torso_axes: Vec3 = (14.0, 30.0, 11.0)          # semi-axes
    haunch_center: Vec3 = (0.0, 8.0, 11.0)
    haunch_axes: Vec3 = (15.0, 14.0, 10.0)
    head_center: Vec3 = (0.0, -38.0, 11.0)
    head_axes: Vec3 = (10.0, 15.0, 9.0)
    ear_center: Vec3 = (12.0, -29.0, 20.0)         # left ear, a flattened ellipsoid
    ear_axes: Vec3 = (5.0, 1.0, 5.5)               # width, thickness, height
    ear_yaw_deg: float = 30.0                      # ear planes turned outward from facing forward
    neck: Vec3 = (0.0, -24.0, 13.0)                # head-yaw pivot
    rear_pivot: Vec3 = (0.0, 18.0, 4.0)            # rearing pitches the front group about this point
    fore_leg_top: Vec3 = (8.0, -16.0, 7.0)         # elbow
    fore_paw: Vec3 = (9.0, -21.0, 1.8)
    fore_leg_radius: float = 1.8
    hind_foot_heel: Vec3 = (12.0, 13.0, 2.0)
    hind_foot_toe: Vec3 = (12.0, 1.0, 2.0)
    hind_foot_radius: float = 2.0
    stride_amplitude_mm: float = 3.0               # fore/aft paw swing at full trot
    tail_start: Vec3 = (0.0, 16.0, 10.0)           # inside the body; the visible tail starts 11 mm later
    tail_hidden_mm: float = 11.0
    tail_length_mm: float = 85.0                   # visible length
    tail_radius_root: float = 2.3
    tail_radius_tip: float = 0.65
    tail_segments: int = 12
    tail_elevation0_deg: float = 5.0               # first segment slightly up, then curving down
    tail_drop_deg: float = 15.0                    # per segment, down to -40 deg, then it lies on the floor
    fur_rgb: Vec3 = (0.11, 0.11, 0.12)             # linear albedo; lit fur ends up at RGB ~20-40
    pink_rgb: Vec3 = (0.78, 0.52, 0.52)            # ears and tail
    paw_rgb: Vec3 = (0.70, 0.50, 0.48)
    fur_texture_amp: float = 0.35                  # relative albedo modulation by smooth noise
    pink_texture_amp: float = 0.12
    texture_wavelength_mm: float = 7.0
    texture_seed: int = 7


ARENA_CENTER_MM = (55.0, 55.0)  # the arena disk's centre in the MAMMAL rig's world (its origin is off-centre)


@dataclass(frozen=True)
class MotionConfig:
    """Random walk of the mouse (all times in seconds, lengths in mm)."""
    arena_center: tuple[float, float] = ARENA_CENTER_MM
    max_radius: float = bounded(85.0, gt=0)        # hard limit for the body origin
    wall_radius: float = bounded(95.0, gt=0)       # the arena wall: the nose never passes it
    nose_reach: float = bounded(52.0, min=0)       # body origin to nose tip along the heading
    preferred_radius: float = bounded(68.0, min=0)  # wall-following ring
    wall_steer_rate: float = bounded(2.5, min=0)   # rad/s turning toward the ring's tangent
    speed_median: float = bounded(106.0, min=0)    # median of the moving (non-rearing) speed, mm/s
    speed_log_std: float = bounded(0.76, min=0)    # gives a 99th percentile of ~ 5.8 x median
    speed_tau: float = bounded(0.5, gt=0)
    turn_std: float = bounded(2.0, min=0)          # rad/s, random turning rate
    turn_tau: float = bounded(0.3, gt=0)
    rear_fraction: float = bounded(0.12, min=0, max=1)  # fraction of frames in rearing episodes
    rear_duration: tuple[float, float] = bounded((0.6, 1.6), gt=0)
    rear_pitch_deg: tuple[float, float] = (45.0, 90.0)
    rear_ramp: float = bounded(0.15, min=0)        # rise / fall time of an episode
    tail_swing_std_deg: float = bounded(20.0, min=0)
    tail_swing_tau: float = bounded(0.4, gt=0)
    head_yaw_std_deg: float = bounded(12.0, min=0)
    head_yaw_tau: float = bounded(0.3, gt=0)
    stride_mm: float = bounded(30.0, gt=0)         # one gait cycle per stride

    def __post_init__(self):
        check_ranges(self)


POSE_FIELDS = ("x", "y", "heading", "pitch", "head_yaw", "tail_swing", "gait_phase", "speed", "rearing")


@dataclass
class PoseTrack:
    """Per-frame pose parameters, numpy arrays [F] (float64; ``rearing`` bool): see module docstring.
    ``speed`` is the commanded walking speed (mm/s), used for the gait amplitude; ``rearing`` marks
    the frames of a rearing episode whose pitch is above half of the episode's target (45-90 deg)."""
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    pitch: np.ndarray
    head_yaw: np.ndarray
    tail_swing: np.ndarray
    gait_phase: np.ndarray
    speed: np.ndarray
    rearing: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _ou(x: float, tau: float, std: float, dt: float, noise: float) -> float:
    """One Euler step of a zero-mean Ornstein-Uhlenbeck process with stationary std ``std``."""
    return x - x * dt / tau + std * math.sqrt(2.0 * dt / tau) * noise


def simulate_poses(cfg: MotionConfig, n_frames: int, fps: float, generator: torch.Generator) -> PoseTrack:
    """Random walk near the wall with rearing episodes, tail swing and head turns -> PoseTrack [n_frames].

    1. log-speed follows an OU process around log(speed_median); speed drops to 0 while rearing;
    2. the heading turns randomly (OU turning rate) and is steered toward the tangent of the
       preferred ring (wall following), the body heading follows the velocity;
    3. the position is kept within max_radius of the arena centre (radial overshoot is removed),
       and at the wall the heading turns along it so that the nose stays inside wall_radius;
    4. rearing episodes start at the rate that gives rear_fraction of the frames, with a smooth
       cosine ramp up to a random pitch in rear_pitch_deg, a hold, and a ramp down.
    """
    dt = 1.0 / fps
    noise = torch.randn(n_frames, 5, generator=generator, dtype=torch.float64).numpy()
    unif = torch.rand(n_frames, 4, generator=generator, dtype=torch.float64).numpy()
    # an episode of mean length D frames is flagged as rearing (pitch above half) for D - ramp
    # frames; starting with probability p per free frame flags p (D - ramp) / (1 + p D) of them
    ramp = max(1, round(cfg.rear_ramp * fps))
    mean_len = 0.5 * sum(cfg.rear_duration) * fps
    p_start = cfg.rear_fraction / max(1.0, mean_len - ramp - cfg.rear_fraction * mean_len)
    c = np.asarray(cfg.arena_center, dtype=np.float64)
    # 0. initial state: on the preferred ring, random azimuth, tangent heading
    az = 2 * math.pi * unif[0, 0]
    pos = c + cfg.preferred_radius * 0.9 * np.array([math.cos(az), math.sin(az)])
    psi = az + math.pi / 2
    log_s = math.log(cfg.speed_median)
    omega = swing = head = phase = 0.0
    ep_left, ep_len, ep_pitch = 0, 0, 0.0
    out = {k: np.zeros(n_frames) for k in POSE_FIELDS}
    for i in range(n_frames):
        n = noise[i]
        # 4. rearing episode state
        if ep_left == 0 and unif[i, 1] < p_start:
            lo, hi = cfg.rear_duration
            ep_len = ep_left = max(2 * ramp + 1, round((lo + (hi - lo) * unif[i, 2]) * fps))
            lo, hi = cfg.rear_pitch_deg
            ep_pitch = math.radians(lo + (hi - lo) * unif[i, 3])
        level = 0.0
        if ep_left > 0:
            k = ep_len - ep_left
            ramp_pos = min(k + 1, ep_left, ramp) / ramp
            level = 0.5 - 0.5 * math.cos(math.pi * ramp_pos)
            ep_left -= 1
        # 1. speed
        log_s = math.log(cfg.speed_median) + _ou(log_s - math.log(cfg.speed_median), cfg.speed_tau,
                                                 cfg.speed_log_std, dt, n[0])
        speed = math.exp(log_s) * (1.0 - level)
        # 2. heading: random turning plus wall following
        omega = _ou(omega, cfg.turn_tau, cfg.turn_std, dt, n[1])
        rel = pos - c
        r = max(1e-6, float(np.hypot(*rel)))
        e_r = rel / r
        tangent = np.array([-e_r[1], e_r[0]])
        if tangent @ np.array([math.cos(psi), math.sin(psi)]) < 0:
            tangent = -tangent
        desired = tangent + 2.0 * (cfg.preferred_radius - r) / cfg.preferred_radius * e_r
        err = math.atan2(desired[1], desired[0]) - psi
        psi += (omega * (1.0 - level) + cfg.wall_steer_rate * math.sin(err)) * dt
        # 3. position within the arena; at the wall the mouse turns along it (it cannot walk
        #    through it): the nose stays inside wall_radius, so the body origin stays inside
        #    sqrt(wall_radius^2 - nose_reach^2) when it runs along the wall
        nose = pos - c + cfg.nose_reach * np.array([math.cos(psi), math.sin(psi)])
        if float(np.hypot(*nose)) > cfg.wall_radius:
            e_r = (pos - c) / max(1e-6, float(np.hypot(*(pos - c))))
            tangent = np.array([-e_r[1], e_r[0]])
            if tangent @ np.array([math.cos(psi), math.sin(psi)]) < 0:
                tangent = -tangent
            psi = math.atan2(tangent[1], tangent[0])
        pos = pos + speed * dt * np.array([math.cos(psi), math.sin(psi)])
        rel = pos - c
        r = float(np.hypot(*rel))
        r_max = min(cfg.max_radius, math.sqrt(max(0.0, cfg.wall_radius ** 2 - cfg.nose_reach ** 2)))
        if r > r_max:
            pos = c + rel * (r_max / r)
        swing = _ou(swing, cfg.tail_swing_tau, math.radians(cfg.tail_swing_std_deg), dt, n[2])
        head = _ou(head, cfg.head_yaw_tau, math.radians(cfg.head_yaw_std_deg), dt, n[3])
        phase = (phase + 2 * math.pi * speed * dt / cfg.stride_mm) % (2 * math.pi)
        for key, val in (("x", pos[0]), ("y", pos[1]), ("heading", psi), ("pitch", level * ep_pitch),
                         ("head_yaw", float(np.clip(head, -0.6, 0.6))),
                         ("tail_swing", float(np.clip(swing - 0.2 * omega, -1.0, 1.0))),
                         ("gait_phase", phase), ("speed", speed), ("rearing", level > 0.5)):
            out[key][i] = val
    out["heading"] = np.mod(out["heading"] + math.pi, 2 * math.pi) - math.pi
    out["rearing"] = out["rearing"].astype(bool)
    return PoseTrack(**out)


# ----------------------------------------------------------------------------------------------
# Body geometry
# ----------------------------------------------------------------------------------------------
def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


@dataclass(frozen=True)
class _Rigid:
    """x_out = R @ x_in + t."""
    R: np.ndarray
    t: np.ndarray

    def __call__(self, p) -> np.ndarray:
        return np.asarray(p, dtype=np.float64) @ self.R.T + self.t

    def then(self, outer: "_Rigid") -> "_Rigid":
        """The transform applying self first, then outer."""
        return _Rigid(outer.R @ self.R, outer.R @ self.t + outer.t)

    @staticmethod
    def about(R: np.ndarray, pivot) -> "_Rigid":
        pivot = np.asarray(pivot, dtype=np.float64)
        return _Rigid(R, pivot - R @ pivot)


@dataclass
class MouseShapes:
    """One frame of the mouse in world mm.

    Ellipsoids: ell_center [E, 3], ell_rot [E, 3, 3] (columns = local axes in world), ell_axes [E, 3].
    Capsules: cap_a [C, 3], cap_b [C, 3] (segment ends), cap_r [C].
    Per piece (ellipsoids first, then capsules): albedo [E+C, 3] linear RGB, tex_amp [E+C],
    tex_R [E+C, 3, 3], tex_t [E+C, 3]: body-frame texture coordinates are tex_R @ (p - tex_t)."""
    ell_center: np.ndarray
    ell_rot: np.ndarray
    ell_axes: np.ndarray
    cap_a: np.ndarray
    cap_b: np.ndarray
    cap_r: np.ndarray
    albedo: np.ndarray
    tex_amp: np.ndarray
    tex_R: np.ndarray
    tex_t: np.ndarray


def _mirror(p) -> np.ndarray:
    return np.array([-p[0], p[1], p[2]], dtype=np.float64)


def _tail_points(body: BodyConfig, swing: float) -> tuple[np.ndarray, np.ndarray]:
    """Tail chain in the body frame: joints [n+1, 3] and segment radii [n], lying on the floor
    where it reaches it; the sideways bend grows linearly to ``swing`` at the tip."""
    n = body.tail_segments
    total = body.tail_hidden_mm + body.tail_length_mm
    seg = total / n
    arc_mid = (np.arange(n) + 0.5) * seg
    frac = np.clip((arc_mid - body.tail_hidden_mm) / body.tail_length_mm, 0.0, 1.0)
    radii = body.tail_radius_root + (body.tail_radius_tip - body.tail_radius_root) * frac
    pts = [np.asarray(body.tail_start, dtype=np.float64)]
    for i in range(n):
        elev = math.radians(max(-40.0, body.tail_elevation0_deg - body.tail_drop_deg * i))
        yaw = swing * (i + 1) / n
        d = np.array([math.sin(yaw) * math.cos(elev), math.cos(yaw) * math.cos(elev), math.sin(elev)])
        p = pts[-1] + seg * d
        p[2] = max(p[2], radii[i])
        pts.append(p)
    return np.stack(pts), radii


def _tail_point_at(joints: np.ndarray, arc: float) -> np.ndarray:
    """The point at arc length ``arc`` along the polyline ``joints`` [n+1, 3]."""
    seg_len = np.linalg.norm(np.diff(joints, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    arc = float(np.clip(arc, 0.0, cum[-1]))
    i = min(int(np.searchsorted(cum, arc, side="right")) - 1, len(seg_len) - 1)
    return joints[i] + (arc - cum[i]) / max(seg_len[i], 1e-9) * (joints[i + 1] - joints[i])


def build_mouse(pose: PoseTrack, frame: int, body: BodyConfig) -> tuple[MouseShapes, np.ndarray]:
    """The mouse of one frame -> (shapes in world mm, keypoints [22, 3] world mm in KEYPOINT_NAMES
    order). Every keypoint lies inside a primitive (on an axis or inside a body ellipsoid), so it
    projects inside the silhouette."""
    P = {name: float(getattr(pose, name)[frame]) for name in POSE_FIELDS}
    # 1. group transforms: placement, rearing pitch (+ lift off the floor), head yaw
    place = _Rigid(_rot_z(P["heading"] + math.pi / 2), np.array([P["x"], P["y"], 0.0]))
    pitch = _Rigid.about(_rot_x(-P["pitch"]), body.rear_pivot)
    lowest = min(pitch(body.torso_center)[2] - _ellipsoid_half_height(pitch.R, body.torso_axes),
                 pitch(body.head_center)[2] - _ellipsoid_half_height(pitch.R, body.head_axes))
    if lowest < 0.5:
        pitch = pitch.then(_Rigid(np.eye(3), np.array([0.0, 0.0, 0.5 - lowest])))
    hind_T = place
    front_T = pitch.then(place)
    head_T = _Rigid.about(_rot_z(P["head_yaw"]), body.neck).then(front_T)
    # 2. gait: diagonal pairs in phase, amplitude grows with speed
    amp = body.stride_amplitude_mm * min(1.0, P["speed"] / 100.0)
    def swing_y(phase_offset: float) -> np.ndarray:
        return np.array([0.0, -amp * math.sin(P["gait_phase"] + phase_offset), 0.0])

    ells, caps, kp = [], [], {}
    fur = (body.fur_rgb, body.fur_texture_amp)
    pink = (body.pink_rgb, body.pink_texture_amp)
    paw = (body.paw_rgb, body.pink_texture_amp)
    # 3. ellipsoids: torso, haunch, head, ears
    ells.append((front_T, body.torso_center, np.eye(3), body.torso_axes, fur))
    ells.append((hind_T, body.haunch_center, np.eye(3), body.haunch_axes, fur))
    ells.append((head_T, body.head_center, np.eye(3), body.head_axes, fur))
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        centre = body.ear_center if sgn > 0 else _mirror(body.ear_center)
        R_ear = _rot_z(sgn * math.radians(body.ear_yaw_deg))
        ells.append((head_T, centre, R_ear, body.ear_axes, pink))
        tip_local = np.array([sgn * 0.3 * body.ear_axes[0], 0.0, 0.83 * body.ear_axes[2]])
        kp[f"{side}_ear_tip"] = head_T(np.asarray(centre) + R_ear @ tip_local)
    # 4. legs: fore legs pitch with the torso, hind feet stay on the floor
    for side, sgn, off in (("left", 1.0, 0.0), ("right", -1.0, math.pi)):
        m = (lambda p: np.asarray(p, dtype=np.float64)) if sgn > 0 else _mirror
        top, paw_pt = m(body.fore_leg_top), m(body.fore_paw) + swing_y(off)
        caps.append((front_T, top, paw_pt, body.fore_leg_radius, paw))
        kp[f"{side}_paw"] = front_T(paw_pt)
        kp[f"{side}_paw_end"] = front_T(paw_pt + np.array([0.0, -0.75, -0.4]) * body.fore_leg_radius)
        kp[f"{side}_elbow"] = front_T(top)
        kp[f"{side}_shoulder"] = front_T(m(body.fore_leg_top) + np.array([sgn * 1.0, 2.0, 3.0]))
        shift = swing_y(off + math.pi)
        heel, toe = m(body.hind_foot_heel) + shift, m(body.hind_foot_toe) + shift
        caps.append((hind_T, heel, toe, body.hind_foot_radius, paw))
        kp[f"{side}_foot"] = hind_T(toe)
        kp[f"{side}_knee"] = hind_T(np.array([sgn * 0.8 * body.haunch_axes[0], body.haunch_center[1] - 2.0,
                                              body.haunch_center[2] - 5.0]))
        kp[f"{side}_hip"] = hind_T(np.array([sgn * 0.9 * body.haunch_axes[0], body.haunch_center[1] + 2.0,
                                             body.haunch_center[2]]))
    # 5. tail chain
    joints, radii = _tail_points(body, P["tail_swing"])
    for i in range(len(radii)):
        caps.append((hind_T, joints[i], joints[i + 1], float(radii[i]), pink))
    kp["tail_root"] = hind_T(_tail_point_at(joints, body.tail_hidden_mm))
    kp["tail_middle"] = hind_T(_tail_point_at(joints, body.tail_hidden_mm + body.tail_length_mm / 2))
    kp["tail_end"] = hind_T(_tail_point_at(joints, body.tail_hidden_mm + body.tail_length_mm - 1.0))
    # 6. body keypoints
    kp["nose"] = head_T(np.asarray(body.head_center) + np.array([0.0, -0.9 * body.head_axes[1], -1.0]))
    kp["neck"] = front_T(np.asarray(body.neck) + np.array([0.0, 0.0, 1.0]))
    kp["body_middle"] = front_T(np.asarray(body.torso_center) + np.array([0.0, -2.0, 1.0]))

    pieces = [(T, s) for T, *_, s in ells] + [(T, s) for T, *_, s in caps]
    shapes = MouseShapes(
        ell_center=np.stack([T(c) for T, c, *_ in ells]),
        ell_rot=np.stack([T.R @ R for T, _, R, *_ in ells]),
        ell_axes=np.array([a for *_, a, _ in ells], dtype=np.float64),
        cap_a=np.stack([T(a) for T, a, *_ in caps]),
        cap_b=np.stack([T(b) for T, _, b, *_ in caps]),
        cap_r=np.array([r for *_, r, _ in caps], dtype=np.float64),
        albedo=np.array([s[0] for _, s in pieces], dtype=np.float64),
        tex_amp=np.array([s[1] for _, s in pieces], dtype=np.float64),
        tex_R=np.stack([T.R.T for T, _ in pieces]),
        tex_t=np.stack([T.t for T, _ in pieces]))
    return shapes, np.stack([kp[name] for name in KEYPOINT_NAMES])


def _ellipsoid_half_height(R: np.ndarray, axes) -> float:
    """Vertical half-extent of an ellipsoid with local axes R (columns) and semi-axes ``axes``."""
    return float(np.sqrt(((R[2, :] * np.asarray(axes)) ** 2).sum()))
