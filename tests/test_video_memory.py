"""Memory stays flat whatever a video's length: in a fresh process, peak RSS after reading a short
generated video, then after reading a long one (sampling at 1 fps with shot detection)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("av")

from videogen import shot_video  # noqa: E402

_READ = """
import json, resource, sys
from evo.data.video import ClipReader, Sampling
for path in sys.argv[1:]:
    r = ClipReader(path, Sampling(mode="fps", fps=1, detector="content"))
    kept = sum(len(b.time) for b in r)
    print(json.dumps({"kept": kept, "decoded": r.decoded, "shots": len(r.shots),
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _read(*paths) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", _READ, *map(str, paths)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.strip().splitlines()[-len(paths):]]


def _check(tmp_path, shots: int, size: int, bound_mb: float) -> None:
    long = shot_video(tmp_path / "long.mp4", shots, seed=1, shot_seconds=(5.0, 7.0), size=size, noise=3.0)
    shot_video(tmp_path / "short.mp4", 3, seed=1, shot_seconds=(5.0, 7.0), size=size, noise=3.0)
    a, b = _read(tmp_path / "short.mp4", tmp_path / "long.mp4")
    n = round(long[-1].end * 25)
    assert b["decoded"] == n and b["kept"] == pytest.approx(long[-1].end, abs=1)
    whole = n * size * size * 3 / 2**20  # what decoding the whole video into RAM would take
    growth = b["peak_mb"] - a["peak_mb"]
    assert growth < bound_mb < whole, (growth, whole, a, b)


def test_memory_flat_on_a_one_minute_video(tmp_path):
    _check(tmp_path, 10, 96, bound_mb=24)  # ~1500 frames, 41 MB if held whole


@pytest.mark.slow
def test_memory_flat_on_a_10_minute_video(tmp_path):
    _check(tmp_path, 100, 64, bound_mb=48)  # ~15000 frames at 25 fps, 184 MB if held whole
