"""Calibration: data readers, streaming observers, ranges."""
from edgepack.calib.calibrate import calibrate
from edgepack.calib.ranges import Ranges

__all__ = ["Ranges", "calibrate"]
