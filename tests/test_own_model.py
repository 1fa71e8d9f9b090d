"""'Your own model in five commands', run verbatim from the page that shows them.

The ```bash block of DOC's 'Your own model' section is split into commands (comments dropped, `\\` continuations
joined) and each is run with bash from the repository root, exiting 0. The substitutions, and
only these: the word `out` as a path (`out/...`, `mkdir -p out`) becomes a temporary folder; a
leading `edgepack` becomes `python -m edgepack` with this checkout on PYTHONPATH (the `edgepack`
on PATH may be another install); and `../shared/` becomes $EDGEPACK_SHARED when that is set
elsewhere (tests/helpers.py). Then the INT8 model's top-1 accuracy on the labelled data, from
the compare step's --json, must be within 0.5 point of FP32's.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, SHARED, requires_shared

#: the page whose ```bash block under its "Your own model" heading is the five commands
DOC = REPO / "README.md"
OUT_WORD = re.compile(r"(?<![\w./-])out(?=/|\s|$)")


def bash_commands(markdown: str) -> list[str]:
    """The commands of the first ```bash block after the "Your own model" heading: comments
    dropped, continuations joined."""
    section = re.search(r"^#+ Your own model.*", markdown, re.S | re.M)
    assert section, "no 'Your own model' section"
    match = re.search(r"^```bash\n(.*?)^```", section[0], re.S | re.M)
    assert match, "no ```bash block"
    text = match[1].replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def localize(command: str, out: Path) -> str:
    command = OUT_WORD.sub(str(out), command)
    if SHARED.resolve() != (REPO.parent / "shared").resolve():
        command = command.replace("../shared/", f"{SHARED}/")
    return re.sub(r"^edgepack\b", f"{sys.executable} -m edgepack", command)


def test_the_block_is_five_steps_and_uses_the_real_data():
    commands = bash_commands(DOC.read_text())
    tools = [c.split()[1] for c in commands if c.startswith("edgepack ")]
    assert tools[:4] == ["inspect", "optimize", "quantize", "compare"] and "build" in tools[4:], tools
    assert any("cifar10_test_jpeg_decoded.npz:images" in c and "--scale" in c for c in commands)


@pytest.mark.slow
@requires_shared
def test_your_own_model_in_five_commands(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEPACK_HISTORY": str(tmp_path / "history.sqlite")}
    for command in bash_commands(DOC.read_text()):
        run = subprocess.run(["bash", "-c", localize(command, out)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, (command, run.stdout[-2000:], run.stderr[-2000:])
    accuracy = json.loads((out / "compare.json").read_text())["accuracy"]
    assert accuracy["samples"] >= 1000
    assert abs(accuracy["b"] - accuracy["a"]) <= 0.005, accuracy
    assert (out / "resnet20.int8.onnx").is_file()
