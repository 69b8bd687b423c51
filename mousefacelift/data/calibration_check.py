"""Calibration doctor: does ``new_cam.pkl`` describe the cameras that filmed the videos?

It uses only what every recording has (no ground truth). Steps, as in :func:`check_calibration`:
1. count the videos (``videos_undist/*.mp4``, ``simpleclick_undist/*.mp4``) against the cameras;
2. decode a few frames spread over the recording: each view's mask centroid (views where the mouse
   is missing or cut by the border are left out) and the 2D keypoints when present;
3. triangulate across views; per camera the ray residual in mm and relative to the camera-to-mouse
   distance (scale-free: a calibration in metres cannot hide behind small numbers), the
   reprojection error (px) and the depth of the centre (it must be in front of every camera);
4. try the usual mix-ups (camera-to-world stored as world-to-camera, R transposed, the camera list
   shifted / reordered / missing an entry against the videos) and name the one that fits, with
   the numbers before and after and the fix;
5. units: the camera-to-mouse distance must be plausible in mm (metres and 1000x are named);
6. the world must be Z-up: the up axis from the camera centres (a rotated world changes no residual).

Thresholds, measured on procedural recordings (tests/test_calibration_check.py). Correct cameras:
the worst camera's median relative residual is 1.1-1.9 % (demo, 200 frames: 1.15 %; 12-frame clips,
seeds 1-3: 1.8, 1.5, 1.5 %; median 3.1-4.2 mm; the silhouette centroid is not one 3D point), the
keypoints' 0 %, distance 306-325 mm, up axis 0.8 deg from +Z. As stored (demo / seed-3 clip):
camera-to-world 34 / 35 %, list shifted by one 16 / 12 %, 5 entries shifted 18 / 10 %, two cameras
swapped 17 / 19 %, R transposed 8.3 / 3.3 % (4.9 % on the keypoints), and its up axis is 66 deg
from +Z (camera-to-world 79, a Y-up world 90). Over all 720 pairings the best wrong one scores at
least 1.7x the correct one (five clips), hence BETTER_FIT_RATIO.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import cameras
from ..constants import MASK_THRESHOLD
from . import recording as rd
from .extract import ExtractConfig, frame_skip_reason, mask_centroids

log = logging.getLogger(__name__)

MAX_RELATIVE_RESIDUAL = 0.04  # worst camera's median ray residual / its distance: 2x the worst correct
MIN_IN_FRONT = 0.9  # fraction of frames in which the mouse centre must be in front of each camera
DISTANCE_RANGE_MM = (50.0, 5000.0)  # plausible median camera-to-mouse distance of a mouse rig
UNIT_FACTORS = {1000.0: "metres (T 1000x too small)", 0.001: "1000x too large (T scaled twice?)"}
BETTER_FIT_RATIO = 0.6  # another pairing fitting this much better than the stored one: a failure too
UP_WARN_DEG = 15.0  # up axis from the camera centres vs +Z: beyond it a warning,
UP_FAIL_DEG = 45.0  # beyond this a failure (nearer a horizontal axis than +Z)
AXIS_SWAP_DEG = 30.0  # the up axis within this of -Z, +-X or +-Y: the world's axes are mixed up
AXES = {"Y-up": (0, 1, 0), "Y-down": (0, -1, 0), "X-up": (1, 0, 0), "X-down": (-1, 0, 0), "Z-down": (0, 0, -1)}
CHECK_FRAMES = 12  # frames decoded, spread over the recording
MIN_VIEWS = 3  # a frame counts when at least this many views see the whole mouse
KEYPOINT_MIN_CONFIDENCE = 0.5
MAX_ASSIGNMENTS = 5040  # beyond this many video <-> camera pairings only shifts and swaps are tried


@dataclass
class Finding:
    """One failure or warning: what was measured, which mix-up fits, and the python that fixes it."""
    level: str  # "fail" | "warn"
    message: str
    fix: str = ""  # statements acting on `cams`, the list loaded from new_cam.pkl


@dataclass
class CalibrationReport:
    """What :func:`check_calibration` measured, for the pairing as stored (video v <-> entry v). per_camera
    rows: video, camera (-1: none), residual_mm, relative, reprojection_px, distance_mm (medians over
    frames), in_front (fraction), keypoint_relative."""
    path: Path
    n_videos: int
    n_masks: int
    n_cameras: int
    frames: list[int] = field(default_factory=list)
    per_camera: list[dict] = field(default_factory=list)
    residual_mm: float = math.nan  # median over rays
    relative_residual: float = math.nan  # worst camera's median
    reprojection_px: float = math.nan
    keypoint_residual_mm: float | None = None  # same for the 2D keypoints, when present
    keypoint_relative: float | None = None
    distance_mm: float = math.nan
    up_angle_deg: float = math.nan
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "fail" for f in self.findings)

    @property
    def fix(self) -> str:
        """A python script that rewrites new_cam.pkl with every fix found, or "" when none."""
        body = [f.fix for f in self.findings if f.fix]
        return "\n".join([f"import os, pickle, shutil\nimport numpy as np\npath = {str(self.path / rd.CAMERA_FILE)!r}",
                          "os.path.exists(path + '.orig') or shutil.copy(path, path + '.orig')",
                          "cams = pickle.load(open(path, 'rb'))", *body, "pickle.dump(cams, open(path, 'wb'))"]) if body else ""

    def to_dict(self) -> dict:
        """Json-ready (NaN -> None)."""
        d = {**asdict(self), "path": str(self.path), "ok": self.ok, "fix": self.fix}
        return json.loads(json.dumps(d), parse_constant=lambda _: None)

    def text(self) -> str:
        L = [f"recording {self.path}",
             f"  videos: {self.n_videos} in {rd.VIDEO_DIR}/, {self.n_masks} in {rd.MASK_DIR}/; "
             f"cameras in {rd.CAMERA_FILE}: {self.n_cameras}"]
        if self.frames:
            L.append(f"  {len(self.frames)} frames used ({self.frames[0]}..{self.frames[-1]}), mask centroids "
                     f"triangulated across views; as stored (video v <-> camera v):")
            L.append("  video camera  residual_mm  relative  reproj_px  in_front  distance_mm  keypoints_rel")
            for r in self.per_camera:
                if r["camera"] < 0:
                    L.append(f"  {r['video']:>5}   none")
                    continue
                kp = "" if r["keypoint_relative"] is None else f"{100 * r['keypoint_relative']:.2f}%"
                L.append(f"  {r['video']:>5} {r['camera']:>6}  {r['residual_mm']:>11.2f}  {100 * r['relative']:>7.2f}%"
                         f"  {r['reprojection_px']:>9.2f}  {100 * r['in_front']:>7.0f}%  {r['distance_mm']:>11.1f}  {kp:>13}")
            L.append(f"  median residual {self.residual_mm:.3g} mm; worst camera {100 * self.relative_residual:.2f}% "
                     f"of its distance (limit {100 * MAX_RELATIVE_RESIDUAL:.0f}%); reprojection {self.reprojection_px:.2f} px")
            if self.keypoint_residual_mm is not None:
                L.append(f"  2D keypoints triangulated: median residual {self.keypoint_residual_mm:.3g} mm, worst camera "
                         f"{100 * self.keypoint_relative:.2f}%")
            L.append(f"  camera-to-mouse distance {self.distance_mm:.1f} mm (plausible {DISTANCE_RANGE_MM[0]:.0f}-"
                     f"{DISTANCE_RANGE_MM[1]:.0f}); up axis {self.up_angle_deg:.1f} deg from +Z")
        for f in self.findings:
            L.append(f"{f.level.upper()}: {f.message}")
        L.append("OK: the calibration fits the videos" if self.ok else "FAILED: fix what the FAIL lines name before "
                 "extracting (ExtractConfig.allow_calibration_failure overrides)")
        if self.fix:
            L.append("fix (python; keeps a copy as new_cam.pkl.orig):\n" + "\n".join("    " + s for s in self.fix.splitlines()))
        return "\n".join(L)


# ----------------------------------------------------------------------------------------------
# Observations
# ----------------------------------------------------------------------------------------------
def _video_indices(folder: Path) -> list[int]:
    return sorted(int(p.stem) for p in folder.glob("*.mp4") if p.stem.isdigit())


def _observe(rec: rd.Recording, n_frames: int, filt: ExtractConfig) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Mask centroids of ``n_frames`` frames spread over the recording -> frames [F], uv [F, V, 2]
    (project px, 0 where invalid), valid [F, V] bool (whole mouse seen); frames with fewer than
    MIN_VIEWS valid views are dropped."""
    sel = rd.FrameSelection(count=n_frames, skip_edges=0.05, cut_frames=())
    frames, uvs, valids = [], [], []
    for fr in rd.read_frames(rec, rd.select_frames(rec.n_frames, sel), progress=False):
        ok = [frame_skip_reason(m[None], filt.min_mask_pixels, filt.border_margin, filt.border_contact_max,
                                filt.border_thin_fraction) is None for m in fr.mask]
        if sum(ok) < MIN_VIEWS:
            continue
        uv = torch.zeros(len(ok), 2, dtype=torch.float64)
        uv[ok] = mask_centroids(fr.mask[ok])
        frames.append(fr.index), uvs.append(uv), valids.append(torch.tensor(ok))
    if not frames:
        return [], torch.zeros(0, rec.n_cameras, 2, dtype=torch.float64), torch.zeros(0, rec.n_cameras, dtype=torch.bool)
    return frames, torch.stack(uvs), torch.stack(valids)


def _keypoints(root: Path, n_videos: int, frames: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """2D keypoints of ``frames`` as extra observations -> uv [F * J, V, 2] (project px), valid [F * J, V]."""
    kdir = root / rd.KEYPOINT_DIR
    if not kdir.is_dir() or not frames:
        return None
    try:
        kp = np.stack([np.asarray(rd.load_pickle_restricted(kdir / f"result_view_{v}.pkl"), np.float64)[frames]
                       for v in range(n_videos)], 1)  # [F, V, J, 3]
    except (rd.RecordingError, IndexError, ValueError) as e:
        log.warning("%s: keypoints not used (%s)", kdir, e)
        return None
    kp = torch.from_numpy(kp).permute(0, 2, 1, 3).reshape(-1, n_videos, 3)
    valid = kp[..., 2] >= KEYPOINT_MIN_CONFIDENCE
    return torch.where(valid[..., None], kp[..., :2] + 0.5, 0.0), valid  # OpenCV -> project pixel centres


# ----------------------------------------------------------------------------------------------
# Geometry of a pairing
# ----------------------------------------------------------------------------------------------
def _evaluate(uv: torch.Tensor, valid: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor,
              assign: torch.Tensor) -> dict[str, torch.Tensor]:
    """Triangulate observations uv [N, V, 2] (project px), valid [N, V] through cameras K [C, 3, 3],
    w2c [C, 4, 4] under pairings assign [A, V] (camera of each video, -1: none). Per pairing and
    video, over the observations: residual_mm, relative (residual / camera-to-point distance),
    reprojection_px, distance_mm (medians), in_front (fraction) -> each [A, V], NaN where the video
    has no camera; score [A] = worst video's relative; all_residual_mm [A] = median over every ray."""
    N, V, _ = uv.shape
    origins, dirs = cameras.rays_through_pixels(uv.reshape(1, N * V, 2).expand(len(K), -1, -1),
                                                cameras.invert_rigid(w2c), K)
    origins, dirs = origins.reshape(-1, N, V, 3), dirs.reshape(-1, N, V, 3)  # [C, N, V, 3]
    n_idx, v_idx = torch.arange(N)[None, :, None], torch.arange(V)[None, None, :]
    nan = torch.tensor(math.nan, dtype=uv.dtype)
    chunk = max(1, 2 ** 17 // max(1, N * V))  # pairings per batch (memory: chunk x N x V x 3 x 3)
    parts = []
    for a in assign.split(chunk):
        cam = a.clamp(min=0)[:, None, :].expand(-1, N, -1)  # [A, N, V]
        o, d = origins[cam, n_idx, v_idx], dirs[cam, n_idx, v_idx]  # [A, N, V, 3]
        w = valid[None] & (a >= 0)[:, None, :]
        usable = w.sum(-1, keepdim=True) >= 2  # fewer rays: solve a dummy problem, ignore it
        X, res = cameras.triangulate_rays(o, d, torch.where(usable, w, True))  # [A, N, 3], [A, N, V]
        w = w & usable
        uv_X, depth = cameras.project(X[:, :, None, None, :].expand(-1, -1, V, -1, -1), w2c[cam], K[cam])
        reproj = (uv_X[..., 0, :] - uv[None]).norm(dim=-1)  # [A, N, V]
        dist = (X[:, :, None, :] - o).norm(dim=-1)

        def med(x):
            return torch.where(w, x, nan).nanmedian(dim=1).values

        parts.append({"residual_mm": med(res), "relative": med(res / dist), "reprojection_px": med(reproj),
                      "distance_mm": med(dist),
                      "in_front": torch.where(w, (depth[..., 0] > 0).to(uv.dtype), nan).nanmean(dim=1),
                      "all_residual_mm": torch.where(w, res, nan).flatten(1).nanmedian(dim=1).values})
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    out["score"] = out["relative"].nan_to_num(-1.0).amax(-1)
    return out


def _pairings(n_cameras: int, n_videos: int) -> list[tuple[int, ...]]:
    """Candidate pairings: tuples over videos of the camera index (-1: none), each camera at most once,
    min(C, V) pairs; all of them when at most MAX_ASSIGNMENTS, else cyclic shifts and single swaps of
    the longer list. The stored pairing (video v <-> camera v) comes first."""
    k, n = min(n_cameras, n_videos), max(n_cameras, n_videos)
    stored = tuple(v if v < k else -1 for v in range(n_videos))
    if math.perm(n, k) <= MAX_ASSIGNMENTS:
        orders = itertools.permutations(range(n), k)  # camera of video v, or video of camera j
    else:
        orders = [tuple((i + s) % n for i in range(n)) for s in range(n)]
        for i, j in itertools.combinations(range(n), 2):
            o = list(range(n))
            o[i], o[j] = j, i
            orders.append(tuple(o))
    if n_cameras >= n_videos:
        cands = (tuple(o[:n_videos]) for o in orders)
    else:
        cands = (tuple(o[:k].index(v) if v in o[:k] else -1 for v in range(n_videos)) for o in orders)
    return [stored] + [c for c in dict.fromkeys(cands) if c != stored]


# name -> (w2c [C, 4, 4] -> what it should have been, the fix acting on `cams`, in words, as an action)
TRANSFORMS = {
    "as stored": (lambda w2c: w2c, "", "", ""),
    "camera-to-world": (cameras.invert_rigid,
                        "for c in cams:  # camera-to-world -> world-to-camera\n"
                        "    R, T = np.asarray(c['R'], float), np.asarray(c['T'], float).reshape(3)\n"
                        "    c['R'], c['T'] = R.T, -R.T @ T",
                        "convert each camera with R' = R.T, T' = -R.T @ T", "inverting each [R|T]"),
    "R transposed": (lambda w2c: cameras.w2c_from_RT(w2c[..., :3, :3].transpose(-1, -2), w2c[..., :3, 3]),
                     "for c in cams:  # R transposed\n    c['R'] = np.asarray(c['R'], float).T",
                     "convert each camera with R' = R.T, T' = T", "transposing each R"),
}


def _span(ids: list[int]) -> str:  # "1-5" for a run of three or more, else "1, 3"
    return f"{ids[0]}-{ids[-1]}" if len(ids) >= 3 and ids == list(range(ids[0], ids[-1] + 1)) else ", ".join(map(str, ids))


def _describe_pairing(p: tuple[int, ...], n_cameras: int) -> tuple[str, str, str]:
    """-> (what the mix-up is, the fix in words, the fix as a statement on `cams` or "") for the
    pairing p (entry of new_cam.pkl filming each video, -1: none)."""
    V = len(p)
    missing = [v for v, c in enumerate(p) if c < 0]
    extra = [c for c in range(n_cameras) if c not in p]
    used = [v for v in range(V) if p[v] >= 0]
    order = "" if [p[v] for v in used] == sorted(p[v] for v in used) else f", out of order (video v <-> entry {list(p)}[v], -1: none)"
    if missing:
        files = " and ".join(f"{d}/{m}.mp4" for m in missing for d in (rd.VIDEO_DIR, rd.MASK_DIR))
        return (f"new_cam.pkl has {n_cameras} cameras for {V} videos: entries {_span([p[v] for v in used])} are the "
                f"cameras of videos {_span(used)}{order}, and video {_span(missing)} has no calibration",
                f"add the calibration of video {_span(missing)} so that entry v of new_cam.pkl is the camera of video v"
                f" (e.g. cams.insert({missing[0]}, ...)), or move {files} out of the recording and renumber the videos", "")
    fix = f"cams = [cams[i] for i in {tuple(p)}]  # entry v = camera of video v"
    words = f"reorder with {fix.split('  #')[0]}"
    if extra:
        return (f"new_cam.pkl has {n_cameras} cameras for {V} videos: {'entries' if len(extra) > 1 else 'entry'} "
                f"{_span(extra)} {'fit' if len(extra) > 1 else 'fits'} no video{order}",
                words, fix)
    q = [p.index(j) for j in range(V)]  # video of entry j
    shift = next((s for s in range(1, V) if all(q[j] == (j + s) % V for j in range(V))), None)
    wrong = [j for j in range(V) if q[j] != j]
    if shift is not None:
        s = shift if shift <= V // 2 else shift - V
        what = (f"the camera list is shifted by {s:+d}: entry j of new_cam.pkl is the camera of video "
                f"j {'+-'[s < 0]} {abs(s)} (modulo {V})")
    elif len(wrong) == 2:
        what = f"cameras {wrong[0]} and {wrong[1]} are swapped in new_cam.pkl"
    else:
        what = f"the camera list is out of order: entry j of new_cam.pkl is the camera of video {q}[j]"
    return what, words, fix


# ----------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------
def _all_videos(root: Path, n_videos: int, K: torch.Tensor, w2c: torch.Tensor) -> rd.Recording:
    """A Recording over every video present when new_cam.pkl holds another number of cameras: only
    what read_frames uses (paths, frame count) describes the videos; K, w2c are the file's [C, ...]."""
    infos = [rd.probe_video(root / sub / f"{v}.mp4") for v in range(n_videos) for sub in (rd.VIDEO_DIR, rd.MASK_DIR)]
    return rd.Recording(path=root, n_cameras=n_videos, n_frames=min(i.n_frames for i in infos), width=infos[0].width,
                        height=infos[0].height, fps=infos[0].fps, K=K, w2c=w2c)


def _candidates(uv, valid, kp, K, w2c, pairs: list[tuple[int, ...]]) -> list[dict]:
    """Every (transform, pairing) measured: score (worst camera's relative residual over the mask
    centroids and, where those pass, the keypoints too), in_front (worst camera), residual_mm,
    distance_mm, up / up_deg (from the centres of the cameras used), rows (per video)."""
    P = torch.tensor(pairs)
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    out, ups = [], {}
    for name, (tf, *_) in TRANSFORMS.items():
        W = tf(w2c)
        ev = _evaluate(uv, valid, K, W, P)
        # keypoints only where the centroids pass (the score is the worse of both): a few pairings
        short = [i for i in range(len(pairs)) if i == 0 or ev["score"][i] <= MAX_RELATIVE_RESIDUAL]
        evk = _evaluate(*kp, K, W, P[short]) if kp is not None else None
        for i, p in enumerate(pairs):
            used = tuple(sorted(c for c in p if c >= 0))
            if (name, used) not in ups:
                up = cameras.up_axis_from_centers(W[list(used)])
                ups[name, used] = (up, float(cameras.angle_between_deg(up, z)))
            k = short.index(i) if evk is not None and i in short else None
            kp_rel = float(evk["score"][k]) if k is not None else None
            c = {"transform": name, "pairing": p, "score": max(float(ev["score"][i]), kp_rel or 0.0),
                 "centroid_relative": float(ev["score"][i]), "residual_mm": float(ev["all_residual_mm"][i]),
                 "keypoint_relative": kp_rel, "keypoint_residual_mm": float(evk["all_residual_mm"][k]) if k is not None
                 else None, "in_front": float(ev["in_front"][i].nan_to_num(2.0).min()),
                 "distance_mm": float(ev["distance_mm"][i].nanmedian()), "up": ups[name, used][0],
                 "up_deg": ups[name, used][1]}
            if i == 0 and name == "as stored":
                c["rows"] = [{"video": v, "camera": cam, **{q: float(ev[q][i, v]) for q in
                              ("residual_mm", "relative", "reprojection_px", "in_front", "distance_mm")},
                              "keypoint_relative": float(evk["relative"][0, v]) if evk is not None else None}
                             for v, cam in enumerate(p)]
            out.append(c)
    return out


def _passes(c: dict) -> bool:
    return c["score"] <= MAX_RELATIVE_RESIDUAL and c["in_front"] >= MIN_IN_FRONT


def _numbers(c: dict) -> str:
    kp = "" if c["keypoint_relative"] is None else f", keypoints {100 * c['keypoint_relative']:.1f}%"
    behind = "" if c["in_front"] >= MIN_IN_FRONT else f", behind a camera in {100 * (1 - c['in_front']):.0f}% of frames"
    up = f", up axis {c['up_deg']:.0f} deg from +Z" if c["up_deg"] > UP_WARN_DEG else ""
    return (f"median residual {c['residual_mm']:.1f} mm (worst camera {100 * c['centroid_relative']:.1f}% of its "
            f"distance{kp}{behind}{up})")


def check_calibration(path: str | os.PathLike, n_frames: int = CHECK_FRAMES, frame_filter: ExtractConfig | None = None,
                      rec: rd.Recording | None = None) -> CalibrationReport:
    """Steps 1-6 of the module docstring for the recording folder ``path`` -> a report whose ``ok``
    says whether extraction may go on. ``frame_filter`` supplies the mask knobs (min_mask_pixels,
    border_*; default ExtractConfig()); ``rec`` an already opened recording, to skip re-probing.
    Raises RecordingError only when a file cannot be read at all (the message names it)."""
    root = Path(path)
    filt = frame_filter or ExtractConfig()
    videos, masks = _video_indices(root / rd.VIDEO_DIR), _video_indices(root / rd.MASK_DIR)
    K, w2c = rd.load_cameras(root / rd.CAMERA_FILE)
    C, V = len(K), len(videos)
    rep = CalibrationReport(path=root, n_videos=V, n_masks=len(masks), n_cameras=C)
    fail = lambda msg, fix="": rep.findings.append(Finding("fail", msg, fix))  # noqa: E731
    # 1. counts
    if not videos or videos != masks or videos != list(range(V)):
        fail(f"{root}: videos {_span(videos) or 'none'} in {rd.VIDEO_DIR}/, masks {_span(masks) or 'none'} in "
             f"{rd.MASK_DIR}/; every camera v needs {rd.VIDEO_DIR}/v.mp4 and {rd.MASK_DIR}/v.mp4, v = 0, 1, ...")
        return rep
    if min(C, V) < MIN_VIEWS:
        fail(f"{root / rd.CAMERA_FILE}: {C} cameras for {V} videos; the check needs {MIN_VIEWS} or more of both")
        return rep
    # 2. observations
    if rec is None or rec.n_cameras != V:
        rec = rd.open_recording(root) if C == V else _all_videos(root, V, K, w2c)
    rep.frames, uv, valid = _observe(rec, n_frames, filt)
    if not rep.frames:
        fail(f"{root / rd.MASK_DIR}: in none of the {n_frames} frames checked do {MIN_VIEWS} views see the whole mouse "
             f"(> {filt.min_mask_pixels} pixels, not cut by the border); masks must be white mouse on black (gray > {MASK_THRESHOLD})")
        return rep
    kp = _keypoints(root, V, rep.frames)
    # 3. the stored geometry and 4. the usual mix-ups
    cands = _candidates(uv, valid, kp, K, w2c, _pairings(C, V))
    stored = cands[0]
    rep.per_camera = stored["rows"]
    rep.residual_mm, rep.relative_residual = stored["residual_mm"], stored["centroid_relative"]
    rep.keypoint_residual_mm, rep.keypoint_relative = stored["keypoint_residual_mm"], stored["keypoint_relative"]
    rep.reprojection_px = float(np.nanmedian([r["reprojection_px"] for r in stored["rows"]]))
    rep.distance_mm, rep.up_angle_deg = stored["distance_mm"], stored["up_deg"]
    unseen = [r["video"] for r in stored["rows"] if r["camera"] >= 0 and math.isnan(r["relative"])]
    if unseen:
        rep.findings.append(Finding("warn", f"video {_span(unseen)} shows the whole mouse in none of the frames used, "
                                            "so its camera is not checked: check its masks, or use more frames"))
    best = min((c for c in cands if _passes(c)), key=lambda c: (c["up_deg"] > UP_FAIL_DEG, c["score"]), default=None)
    if _passes(stored) and best is not None and (best["up_deg"] > UP_FAIL_DEG) == (stored["up_deg"] > UP_FAIL_DEG) \
            and best["score"] >= BETTER_FIT_RATIO * stored["score"]:
        best = stored
    if best is None:
        fail(f"{root / rd.CAMERA_FILE} does not fit the videos: {_numbers(stored)} against a limit of "
             f"{100 * MAX_RELATIVE_RESIDUAL:.0f}%, and no usual mix-up fits (camera-to-world, R transposed, "
             f"{len(cands) // len(TRANSFORMS)} pairings of cameras and videos); the table shows which cameras disagree")
        best = stored
    elif best is not stored or C != V:
        what, words, fixes, actions = [], [], [], []
        if best["transform"] != "as stored":
            _, snippet, w, action = TRANSFORMS[best["transform"]]
            what.append(f"new_cam.pkl looks like {best['transform']}")
            words.append(w), fixes.append(snippet), actions.append(action)
        if best["pairing"] != stored["pairing"] or C != V:
            w, advice, snippet = _describe_pairing(best["pairing"], C)
            what.append(w), words.append(advice), fixes.append(snippet)
            if best["pairing"] != stored["pairing"]:
                actions.append("pairing each video with the camera that fits")
        after = f", {best['residual_mm']:.1f} mm ({100 * best['centroid_relative']:.1f}%) after {' and '.join(actions)}" \
            if actions else ""
        fail(f"{'; '.join(what)}: {_numbers(stored)} as stored{after}; {'; then '.join(words)}",
             "\n".join(f for f in fixes if f))
    # 5. units
    d = best["distance_mm"]
    if not DISTANCE_RANGE_MM[0] <= d <= DISTANCE_RANGE_MM[1]:
        fit = [f for f in UNIT_FACTORS if DISTANCE_RANGE_MM[0] <= d * f <= DISTANCE_RANGE_MM[1]]
        if fit:
            fail(f"T of new_cam.pkl looks like {UNIT_FACTORS[fit[0]]}: the cameras are {d:.4g} units from the mouse, "
                 f"{d * fit[0]:.0f} mm after T' = {fit[0]:g} * T (recordings are in mm)",
                 f"for c in cams:  # T in mm\n    c['T'] = np.asarray(c['T'], float) * {fit[0]!r}")
        else:
            fail(f"the cameras are {d:.4g} units from the mouse: not plausible in mm ({DISTANCE_RANGE_MM[0]:.0f}-"
                 f"{DISTANCE_RANGE_MM[1]:.0f}); store T in mm")
    # 6. the up axis (a rotated world leaves every residual unchanged: only the rig's shape tells)
    up, angle = best["up"], best["up_deg"]
    if angle > UP_WARN_DEG:
        z = torch.tensor([0.0, 0.0, 1.0], dtype=up.dtype)
        near = [(n, torch.tensor(a, dtype=up.dtype)) for n, a in AXES.items()
                if cameras.angle_between_deg(up, torch.tensor(a, dtype=up.dtype)) <= AXIS_SWAP_DEG]
        W = cameras.rotation_between(near[0][1], z).round(decimals=0) if near else cameras.rotation_between(up, z)
        W = [[round(x, 6) + 0.0 for x in r] for r in W.tolist()]
        rep.findings.append(Finding(
            "fail" if angle > UP_FAIL_DEG else "warn",
            f"the world looks {near[0][0] if near else 'tilted'}: the up axis from the camera centres is "
            f"{tuple(round(x, 3) for x in up.tolist())}, {angle:.0f} deg from +Z (worlds are Z-up here; warning beyond "
            f"{UP_WARN_DEG:.0f} deg, failure beyond {UP_FAIL_DEG:.0f}); rotate the world by W = {W}: R' = R @ W.T, T' = T",
            f"W = np.array({W})  # X' = W X is Z-up\nfor c in cams:\n    c['R'] = np.asarray(c['R'], float) @ W.T"))
    return rep
