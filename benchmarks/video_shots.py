"""Shot-boundary precision and recall on generated videos whose cuts are known.

Each video holds --shots shots of random Fashion-MNIST items (random tint and background, pan and
zoom, Gaussian noise), cut hard every 1-2 s. A detected cut matches a true one within --tolerance
seconds (each true cut at most once). Detectors: PySceneDetect's ContentDetector ('content') and
evo's histogram difference ('histogram'), each at a few thresholds, on videos at two noise levels.

    python benchmarks/video_shots.py --videos 20 --shots 12
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from evo.data.video import ClipReader, Sampling, boundary_scores  # noqa: E402

SETTINGS = [("content", 15.0), ("content", 27.0), ("content", 40.0),
            ("histogram", 0.2), ("histogram", 0.35), ("histogram", 0.5)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=20)
    p.add_argument("--shots", type=int, default=12)
    p.add_argument("--noise", type=float, nargs="+", default=[6.0, 20.0])
    p.add_argument("--tolerance", type=float, default=0.081, help="seconds (two frames at 25 fps)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from videogen import shot_video

    tmp = Path(tempfile.mkdtemp(prefix="evo-shots-"))
    rows = []
    for noise in args.noise:
        videos = []
        for v in range(args.videos):
            path = tmp / f"n{noise:g}_{v}.mp4"
            truth = shot_video(path, args.shots, seed=1000 + v, noise=noise)
            videos.append((path, [s.start for s in truth[1:]], round(truth[-1].end * 25)))
        for det, thr in SETTINGS:
            found_all, true_all, frames, t = [], [], 0, time.perf_counter()
            for k, (path, cuts, n) in enumerate(videos):
                r = ClipReader(path, Sampling(mode="fps", fps=1, detector=det, threshold=thr))
                list(r)
                found_all += [k * 1e4 + s.start for s in r.shots[1:]]  # offset: match within one video
                true_all += [k * 1e4 + c for c in cuts]
                frames += n
            dt = time.perf_counter() - t
            s = boundary_scores(found_all, true_all, args.tolerance)
            rows.append({"noise": noise, "detector": det, "threshold": thr, **s, "fps": frames / dt})
            print(f"noise {noise:>4g}  {det:<9} thr {thr:>5g}  precision {s['precision']:.3f}  "
                  f"recall {s['recall']:.3f}  F1 {s['f1']:.3f}  ({s['found']} found / {s['true']} true)  "
                  f"{frames / dt:.0f} frames/s", flush=True)
    doc = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
           "videos": args.videos, "shots": args.shots, "tolerance": args.tolerance, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
