"""Forward speed of a compiled ArchGraph (EvoNet) against the module it was imported from.

For each model and input size: build the source module, import it with `evo.graph.from_module`, compile
with `.to_module()`, and time eval-mode forwards under torch.no_grad() in both memory formats. Source and
compiled runs are interleaved (ABBA order per repeat) after a warm-up, so machine noise hits both alike;
the table reports the median time of each as img/s, and the median of the per-repeat paired ratios
compiled/source (target: <= 1.05).

    python benchmarks/compile_speed.py                      # resnet18 + efficientnet_lite0, 224 and 64 px
    python benchmarks/compile_speed.py --repeats 11 --batch 32 --sizes 224 --formats channels_last
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from evo.graph import from_module
from evo.zoo.efficientnet_lite import build_lite0

FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def source_module(model: str, size: int) -> nn.Module:
    if model == "efficientnet_lite0":
        return build_lite0(pretrained=True, input_size=size)
    torch.manual_seed(0)
    return getattr(torchvision.models, model)(weights=None)


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(model: str, size: int, fmt: str, batch: int, repeats: int, warmup: int) -> dict:
    src = source_module(model, size).eval()
    evo = from_module(src, (3, size, size), name=model).to_module().eval()
    mf = FORMATS[fmt]
    src, evo = src.to(memory_format=mf), evo.to(memory_format=mf)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=mf)
    with torch.no_grad():
        diff = (src(x) - evo(x)).abs().max().item()
        for _ in range(warmup):
            src(x)
            evo(x)
        t_src, t_evo = [], []
        for r in range(repeats):
            order = [(src, t_src), (evo, t_evo)]
            for m, out in order if r % 2 == 0 else order[::-1]:
                out.append(_time(lambda m=m: m(x)))
    ratios = [e / s for s, e in zip(t_src, t_evo, strict=True)]
    return {"model": model, "size": size, "format": fmt, "diff": diff,
            "src_ips": batch / statistics.median(t_src), "evo_ips": batch / statistics.median(t_evo),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "efficientnet_lite0"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[224, 64])
    ap.add_argument("--formats", nargs="+", choices=sorted(FORMATS), default=["channels_last", "contiguous"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7, help="timed runs of each module (median taken); >= 7")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {datetime.date.today()}  torch {torch.__version__}  {cpu_name()}  threads={args.threads}  "
          f"batch={args.batch}  repeats={args.repeats}  warmup={args.warmup}  eval, no_grad")
    print("| model | px | memory format | source img/s | compiled img/s | compiled/source time "
          "(median, [min, max] of paired ratios) | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        for size in args.sizes:
            for fmt in args.formats:
                r = bench(model, size, fmt, args.batch, args.repeats, args.warmup)
                flag = "" if r["ratio"] <= 1.05 else " **> 1.05**"
                print(f"| {model} | {size} | {fmt} | {r['src_ips']:.1f} | {r['evo_ips']:.1f} | "
                      f"{r['ratio']:.3f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}]{flag} | {r['diff']:.1e} |",
                      flush=True)


if __name__ == "__main__":
    main()
