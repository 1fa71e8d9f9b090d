"""Copies the data folders (targets/, the digits calibration set) into the wheel as package data,
so an installed edgepack finds them (see edgepack/resources.py). Source checkouts read them in place."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
DATA = {"targets": "*.toml", "calibration/digits": "*"}


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        for folder, pattern in DATA.items():
            dest = Path(self.build_lib) / "edgepack" / "_data" / folder
            dest.mkdir(parents=True, exist_ok=True)
            for file in (ROOT / folder).glob(pattern):
                shutil.copy2(file, dest / file.name)


setup(cmdclass={"build_py": BuildPyWithData})
