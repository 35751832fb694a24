"""The peer benchmark: evo against Avalanche and the closed-form family, one command, one table.

    .venv/bin/python benchmarks/peers/run.py                                  # full scale (all 60k images)
    .venv/bin/python benchmarks/peers/run.py --per-class 10 --per-class-test 20 --epochs 1 --joint-epochs 20 \
        --batch-size 16 --ranpac-dim 5000 --acil-buffer 4096 --threads 1 --taps-peers   # what finished on 2 shared cores

Split Fashion-MNIST, class-incremental 5 × 2, the same class orders, images, memory (500) and test
split for every method (`evo.data.class_incremental(..., seed=s)`), from the same ImageNet-pretrained
EfficientNet-Lite0 at 64 px. Families:
  evo          evo.Learner(strategy="evo"): frozen multi-layer features + the exact ridge head;
               `--evo-search` adds evo's growth search (search_spaces/fashion_quick.yaml's space)
  closed-form  SimpleCIL, RanPAC, ACIL, SLDA on the frozen pooled features, computed once per seed
               and shared (each row is charged the extraction)
  avalanche    Naive, Replay, EWC, LwF, iCaRL, GDumb, DER from avalanche-lib in its own venv
               (benchmarks/peers/setup_avalanche.sh makes it), every layer trained
  joint        every layer fine-tuned on all the data at once: the ceiling
Each method runs in its own process (peak memory is its own). A method that fails is a row with its
error, never dropped. Writes results/peers.json (schema in the module `table`), results/peers.md and
prints the table; `--resume` keeps rows of an earlier run with the same setting.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from table import markdown, text  # noqa: E402

from evo.runs import write_json_atomic, write_text_atomic  # noqa: E402

CLOSED = ("SimpleCIL", "RanPAC", "ACIL", "SLDA")
TAPS = "+evo-taps"  # suffix: the same closed-form method on evo's multi-layer features instead of pooled ones
CLOSED_TAPS = tuple(m + TAPS for m in CLOSED)
AVALANCHE = ("Naive", "Replay", "EWC", "LwF", "iCaRL", "GDumb", "DER")
FAMILY = {**{m: "closed-form" for m in CLOSED}, **{m: "avalanche" for m in AVALANCHE},
          **{m: "closed-form" for m in CLOSED_TAPS},
          "evo": "evo", "evo-search": "evo", "joint": "joint", "evo+rf": "evo", "evo-search+rf": "evo"}
RF = "+rf"  # suffix: evo with `--expand` random ReLU features of its taps (the `evo` strategy's `expand`)
DEFAULT_METHODS = ("evo", *CLOSED, *AVALANCHE, "joint")
AVALANCHE_PY = HERE / ".venv-avalanche" / "bin" / "python"
MACHINE = "shared 2-core VM, no GPU"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   choices=[*DEFAULT_METHODS, *CLOSED_TAPS, "evo-search", "evo+rf", "evo-search+rf"], metavar="METHOD",
                   help=f"default: {' '.join(DEFAULT_METHODS)}; also evo-search, and each closed-form "
                        f"method on evo's multi-layer features (e.g. RanPAC{TAPS}; see --taps-peers)")
    p.add_argument("--taps-peers", action="store_true",
                   help=f"add the closed-form methods on evo's own multi-layer features ({', '.join(CLOSED_TAPS)})")
    p.add_argument("--evo-search", action="store_true", help="add evo's growth search (long)")
    p.add_argument("--per-class", type=int, default=None, help="training images per class, every method (default: all 6000)")
    p.add_argument("--per-class-test", type=int, default=None, help="test images per class (default: all 1000)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per experience for the Avalanche strategies")
    p.add_argument("--joint-epochs", type=int, default=5, help="epochs for the joint ceiling")
    p.add_argument("--batch-size", type=int, default=64, help="SGD batch size (Avalanche and joint)")
    p.add_argument("--ranpac-dim", type=int, default=10000, help="RanPAC's random projection width M (paper: 10000)")
    p.add_argument("--acil-buffer", type=int, default=8192, help="ACIL's buffer width (authors' default 8192)")
    p.add_argument("--expand", type=int, default=2000,
                   help=f"evo{RF}, evo-search{RF}: random ReLU features of the taps (the evo strategy's `expand`)")
    p.add_argument("--search-trials", type=int, default=None, help="evo-search: trials per round (default: the space's)")
    p.add_argument("--search-budget", type=float, default=None,
                   help="evo-search: budget as a fraction of joint (default: the space's; small subsets need more)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=Path, default=HERE / "results")
    p.add_argument("--resume", action="store_true", help="keep rows of a previous run with the same setting")
    p.add_argument("--rerun", nargs="+", default=[], metavar="METHOD",
                   help="with --resume: drop these methods' earlier rows (run again, or taken from --merge)")
    p.add_argument("--merge", type=Path, nargs="+", default=[],
                   help="peers.json files of runs with the same setting run elsewhere: their rows join this table")
    p.add_argument("--avalanche-python", type=Path, default=AVALANCHE_PY)
    args = p.parse_args(argv)
    if args.evo_search and "evo-search" not in args.methods:
        args.methods.append("evo-search")
    if args.taps_peers:
        args.methods += [m for m in CLOSED_TAPS if m not in args.methods]
    return args


def setting(args) -> dict:
    return {"data": "Split Fashion-MNIST, class-incremental, 5 increments x 2 classes",
            "backbone": "EfficientNet-Lite0, ImageNet-pretrained, 64 px (evo.zoo)",
            "per_class_train": args.per_class or 6000, "per_class_test": args.per_class_test or 1000,
            "seeds": args.seeds, "memory": 500, "avalanche_epochs": args.epochs, "joint_epochs": args.joint_epochs,
            "batch_size": args.batch_size, "ranpac_dim": args.ranpac_dim, "acil_buffer": args.acil_buffer,
            "search_trials": args.search_trials, "search_budget": args.search_budget, "threads": args.threads,
            "expand": args.expand}


def _run(cmd: list[str], log: Path, python: str | None = None) -> str | None:
    """Run a worker; None on success, else the last line of its output (the error)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as f:
        rc = subprocess.run([python or sys.executable, *cmd], cwd=HERE, stdout=f, stderr=subprocess.STDOUT,
                            env=env).returncode
    if rc == 0:
        return None
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return f"exit {rc}: " + (lines[-1][:400] if lines else "no output")


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = args.out_dir
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/peers/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {"command": command.strip(), "date": datetime.date.today().isoformat(), "machine": MACHINE,
           "setting": setting(args), "rows": []}
    json_path = out_dir / "peers.json"
    if args.resume and json_path.exists():
        old = json.loads(json_path.read_text())
        if _comparable(old.get("setting", {}), doc["setting"]):
            doc["rows"] = [r for r in old["rows"] if r.get("error") is None and r["method"] in args.methods
                           and r["method"] not in args.rerun]
            doc["rows"] += [r for r in old["rows"] if r["method"] not in args.methods and r["method"] not in args.rerun]
            doc["command"] = old["command"] + " ; " + doc["command"]
            doc["setting"] = {**old["setting"], **{k: v for k, v in doc["setting"].items() if v is not None}}
            print(f"resuming: {len(doc['rows'])} rows kept from {json_path}", flush=True)
    for other in args.merge:  # e.g. rows run at the same time in another out-dir
        od = json.loads(other.read_text())
        if not _comparable(od["setting"], doc["setting"]):
            raise SystemExit(f"--merge {other}: its setting differs from this run's; not merged")
        have = {(r["method"], r["seed"]) for r in doc["rows"]}
        doc["rows"] += [r for r in od["rows"] if (r["method"], r["seed"]) not in have and r.get("error") is None]
        doc["command"] += f" ; merged from: {od['command']}"
    done = {(r["method"], r["seed"]) for r in doc["rows"]}
    scale = ["--per-class-test", str(args.per_class_test)] if args.per_class_test else []
    if args.per_class:
        scale += ["--per-class", str(args.per_class)]
    print(f"peer benchmark: {platform.node()}, python {platform.python_version()}, {args.threads} threads, "
          f"{time.strftime('%Y-%m-%d %H:%M')}; {doc['setting']}", flush=True)
    have_avalanche = args.avalanche_python.exists()

    def save(row: dict) -> None:
        doc["rows"].append(row)
        write_json_atomic(json_path, doc)
        write_text_atomic(out_dir / "peers.md", markdown(doc))
        status = row["error"] or (f"final {100 * row['final_accuracy']:.2f}%, {row['tflops']:.3f} TFLOPs, "
                                  f"{row['wall_seconds']:.0f}s")
        print(f"  {row['method']:<10} seed {row['seed']}: {status}", flush=True)

    with tempfile.TemporaryDirectory(prefix="evo-peers-") as tmp:
        for seed in args.seeds:
            feats = Path(tmp) / f"features-{seed}.npz"
            for method in args.methods:
                if (method, seed) in done:
                    continue
                out = Path(tmp) / f"{method}-{seed}.json"
                log = out_dir / "logs" / f"{method}-{seed}.log"
                common_args = ["--seed", str(seed), "--threads", str(args.threads), "--out", str(out), *scale]
                python = None
                if method in CLOSED or method in CLOSED_TAPS:
                    err = None
                    if not feats.exists():
                        err = _run(["worker.py", "features", "--seed", str(seed), "--threads", str(args.threads),
                                    "--out", str(feats), *scale], out_dir / "logs" / f"features-{seed}.log")
                    cmd = ["worker.py", "closed", "--method", method.removesuffix(TAPS), "--features", str(feats),
                           "--feature-set", "taps" if method.endswith(TAPS) else "pooled",
                           "--ranpac-dim", str(args.ranpac_dim), "--acil-buffer", str(args.acil_buffer), *common_args]
                    if err:
                        save(_error_row(method, seed, f"feature extraction failed: {err}"))
                        continue
                elif method in AVALANCHE:
                    if not have_avalanche:
                        save(_error_row(method, seed, f"{args.avalanche_python} missing: run "
                                                      "bash benchmarks/peers/setup_avalanche.sh"))
                        continue
                    python = str(args.avalanche_python)
                    cmd = ["avalanche_runner.py", "--strategy", method, "--epochs", str(args.epochs),
                           "--batch-size", str(args.batch_size), *common_args]
                elif method == "joint":
                    cmd = ["worker.py", "joint", "--epochs", str(args.joint_epochs), "--batch-size",
                           str(args.batch_size), *common_args]
                elif method.startswith("evo"):
                    cmd = ["worker.py", method.removesuffix(RF), *common_args]
                    cmd += ["--expand", str(args.expand)] if method.endswith(RF) else []
                if method.startswith("evo-search"):
                    cmd += ["--trials", str(args.search_trials)] if args.search_trials else []
                    cmd += ["--budget-fraction", str(args.search_budget)] if args.search_budget else []
                t0 = time.perf_counter()
                err = _run(cmd, log, python)
                row = _error_row(method, seed, err) if err else json.loads(out.read_text())
                if not err and row.get("error"):
                    row = _error_row(method, seed, row["error"])
                row = {"method": method, "family": FAMILY[method], "seed": seed, **row,
                       "process_seconds": time.perf_counter() - t0}
                row.setdefault("error", None)
                save(row)
    write_json_atomic(json_path, doc)
    write_text_atomic(out_dir / "peers.md", markdown(doc))
    print()
    print(text(doc))
    print(f"\nwrote {json_path} and {out_dir / 'peers.md'}")
    return 0


SEARCH_KEYS = ("search_trials", "search_budget", "seeds", "joint_epochs", "expand")  # rows carry their seed and epochs


def _comparable(a: dict, b: dict) -> bool:
    """Same data, scale and peers' settings (seeds, joint's epochs and the search's options may differ)."""
    return {k: v for k, v in a.items() if k not in SEARCH_KEYS} == {k: v for k, v in b.items() if k not in SEARCH_KEYS}


def _error_row(method: str, seed: int, error: str) -> dict:
    return {"method": method, "family": FAMILY[method], "seed": seed, "final_accuracy": None,
            "average_incremental_accuracy": None, "forgetting": None, "tflops": None, "wall_seconds": None,
            "peak_mem_bytes": None, "error": error}


if __name__ == "__main__":
    raise SystemExit(main())
