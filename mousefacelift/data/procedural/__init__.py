"""The embedded procedural recording: a MAMMAL-format folder rendered exactly from analytic primitives,
with its ground truth.

```
<recording>/
  videos_undist/{v}.mp4               RGB, H.264 (keyframe every 250) or mp4v, fps from the rig (100)
  simpleclick_undist/{v}.mp4          masks (white = mouse; lossy, readers use gray > 127)
  new_cam.pkl                         list of V dicts: K (3,3) OpenCV pixel centres, R (3,3), T (3,); mm
  keypoints2d_undist/result_view_{v}.pkl   float64 (frames, 22, 3) = x_px, y_px (OpenCV), confidence
  ground_truth/poses.npz              per-frame pose parameters (mouse.POSE_FIELDS)
  ground_truth/keypoints3d.npz        keypoints (frames, 22, 3), mm world
  ground_truth/params.json            the ProceduralConfig, its hash, keypoint names, image size
```
Same config and seed -> identical ground-truth bytes and identical decoded frames.

Modules: :mod:`.config` (what defines a recording, its hash), :mod:`.mouse` (the articulated body and
its motion), :mod:`.geometry` (the body as quadrics: ray casting, containment, surface sampling),
:mod:`.render` (frames and keypoints), :mod:`.video` (files), :mod:`.generate` (generation, the
cache, ground truth and contact sheets).

Entry points: :func:`generate_recording`, :func:`ensure_recording` (cached by config hash),
:func:`simulate_motion`, :func:`sample_surface`, :func:`contact_sheet`, :func:`demo_config`,
:func:`split_coverage` (which behaviours each split holds), :func:`behaviour` (one frame's).
"""
from .config import (FORMAT_VERSION, GT_DIR, RUNTIME_KEYS, ProceduralConfig, RigConfig, SceneConfig, config_hash,
                     demo_config, image_size, rig_cameras, simulate_motion)
from .generate import (behaviour, contact_sheet, ensure_recording, generate_recording, load_ground_truth,
                       sample_surface, split_coverage)
from .mouse import ARENA_CENTER_MM, KEYPOINT_NAMES, POSE_FIELDS, BodyConfig, MotionConfig, MouseShapes, PoseTrack, build_mouse
from .render import Scene, build_scene, keypoints_2d, render_frame, render_frames

__all__ = ["FORMAT_VERSION", "GT_DIR", "RUNTIME_KEYS", "ProceduralConfig", "RigConfig", "SceneConfig", "config_hash",
           "demo_config", "image_size", "rig_cameras", "simulate_motion", "contact_sheet", "ensure_recording",
           "generate_recording", "load_ground_truth", "sample_surface", "split_coverage", "behaviour", "ARENA_CENTER_MM",
           "KEYPOINT_NAMES", "POSE_FIELDS", "BodyConfig", "MotionConfig", "MouseShapes", "PoseTrack", "build_mouse",
           "Scene", "build_scene", "keypoints_2d", "render_frame", "render_frames"]
