"""Calibration: data readers, preprocessing, streaming observers, ranges."""
from edgepack.calib.calibrate import calibrate
from edgepack.calib.preprocess import Preprocess
from edgepack.calib.ranges import Ranges

__all__ = ["Preprocess", "Ranges", "calibrate"]
