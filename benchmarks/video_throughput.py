"""Video decode + sample + embed throughput on CPU, split between decoding and the network.

Generates a video (Fashion-MNIST items panning and zooming, cuts every 1-2 s) and measures, each
in one pass over it:
  decode          PyAV decode to RGB numpy batches (every frame)
  decode+shots    the same, plus the shot detector on every frame (content, histogram)
  sample+embed    ClipReader at --fps with the content detector, sampled frames embedded by frozen
                  ImageNet Lite0 at --input-size: frames/s, and the seconds inside the network
                  vs the rest (decode, shot detection, sampling)
  embed-all       every frame through the network (the network's own ceiling)

    python benchmarks/video_throughput.py --threads 2 --seconds 60 --size 256
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import evo.zoo  # noqa: E402
from evo.data.transforms import Preprocess  # noqa: E402
from evo.data.video import ClipReader, Sampling, iter_frames, make_detector  # noqa: E402
from evo.data.video.sample import _detect_view  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=60.0, help="video length")
    p.add_argument("--size", type=int, default=256, help="video frame side in pixels")
    p.add_argument("--fps", type=float, default=2.0, help="sampling rate for sample+embed")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from videogen import shot_video

    tmp = Path(tempfile.mkdtemp(prefix="evo-video-bench-"))
    n_shots = int(args.seconds / 1.5) + 1
    truth = shot_video(tmp / "v.mp4", n_shots, seed=0, size=args.size)
    path = tmp / "v.mp4"
    rows: dict[str, dict] = {}

    t = time.perf_counter()
    n = sum(len(b.time) for b in iter_frames(path, batch=args.batch))
    dt = time.perf_counter() - t
    rows["decode"] = {"frames": n, "seconds": dt, "fps": n / dt}
    for det in ("content", "histogram"):
        d = make_detector(det, fps=25.0)
        t = time.perf_counter()
        for b in iter_frames(path, batch=args.batch):
            for tt, f in zip(b.time, b.frames, strict=True):
                d.push(float(tt), _detect_view(f))
        d.finish()
        dt = time.perf_counter() - t
        rows[f"decode+shots({det})"] = {"frames": n, "seconds": dt, "fps": n / dt}

    graph = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=args.input_size)
    net, pre = graph.to_module().eval(), Preprocess.from_dict(graph.meta["preprocess"])

    def embed(frames: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net.forward_features(pre(frames)).numpy()

    embed(np.zeros((2, args.size, args.size, 3), np.uint8))  # warm-up
    reader = ClipReader(path, Sampling(mode="fps", fps=args.fps, detector="content"), batch=args.batch)
    net_s, kept = 0.0, 0
    t = time.perf_counter()
    for b in reader:
        t1 = time.perf_counter()
        embed(b.frames)
        net_s += time.perf_counter() - t1
        kept += len(b.frames)
    dt = time.perf_counter() - t
    rows["sample+embed"] = {"frames_decoded": reader.decoded, "frames_embedded": kept, "seconds": dt,
                            "network_seconds": net_s, "rest_seconds": dt - net_s,
                            "decoded_fps": reader.decoded / dt, "embedded_fps": kept / dt}
    net_s, t = 0.0, time.perf_counter()
    for b in iter_frames(path, batch=args.batch):
        t1 = time.perf_counter()
        embed(b.frames)
        net_s += time.perf_counter() - t1
    dt = time.perf_counter() - t
    rows["embed-all"] = {"frames": n, "seconds": dt, "network_seconds": net_s, "fps": n / dt,
                         "network_fps": n / net_s}
    doc = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
           "threads": args.threads, "video": {"seconds": truth[-1].end, "size": args.size, "fps": 25,
                                              "frames": n, "shots": len(truth)}, "rows": rows}
    print(json.dumps(doc, indent=1))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
