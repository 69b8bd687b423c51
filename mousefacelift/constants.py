"""Fixed facts the code relies on, stated once: FaceLift's canonical rig and the mask threshold.

Settings that a run may change (a notebook's ``fov_deg``, a config's ``image_size``) take these as
their defaults; the values themselves are written only here. Sources: FaceLift's inference rig
(6 views on a circle of radius 2.7 around the subject, 512 px images, 50 degree field of view,
``fx = fy = 256 / tan(25 deg)`` stored as float32) and the recording's lossy mask videos.
"""
import math
import struct

# -- FaceLift's canonical inference rig --------------------------------------------------------------
FACELIFT_DISTANCE = 2.7  # camera distance from the subject (normalized units)
FACELIFT_IMAGE_SIZE = 512  # image side (px)
FACELIFT_FOV_DEG = 50.0  # field of view (degrees) of every view
# fx = fy = (size / 2) / tan(fov / 2) at FACELIFT_IMAGE_SIZE, rounded to float32 as FaceLift stores it
FACELIFT_FOCAL = struct.unpack("f", struct.pack("f", FACELIFT_IMAGE_SIZE / 2 / math.tan(math.radians(FACELIFT_FOV_DEG) / 2)))[0]
FACELIFT_VIEW_NAMES = ("front", "front_right", "right", "back", "left", "front_left")
FACELIFT_AZIMUTH_OFFSETS = (0.0, -45.0, -90.0, 180.0, 90.0, 45.0)  # degrees from the front camera
FACELIFT_FRONT_AZIMUTH = -90.0  # the front camera sits at (0, -2.7, 0): the subject faces -Y

# -- Recording --------------------------------------------------------------------------------------
MASK_THRESHOLD = 127  # a mask pixel (gray, 0-255) is foreground when above this: the mask videos are lossy
