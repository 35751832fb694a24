"""Corrections on the class-incremental Fashion-MNIST model (issue 10's protocol), in one run.

1. Model: ImageNet-pretrained Lite0 at 64 px, the `evo` strategy, learnt over all 5 increments of
   Split Fashion-MNIST (class-incremental, seed 0; `--per-class-train` caps the data), committed as
   a run (`--work/run`, reused when present).
2. The 10,000 test images are split (seed 0) into a pool of 5,000 the user browses and a held-out
   5,000 that only measures. The user flags, one at a time, the first 200 pool images the model gets
   wrong, with their true label: `Corrections.correct` in process (timed, forward pass and the
   fsync'd log commit included). Measured: latency median/p95, % holding after their own update,
   % of earlier corrections holding or reported as conflicts after all 200, held-out accuracy change,
   `evo correct` end to end (a fresh process per call) on a few more, undo of all 200 in random
   order vs the original head, and a full re-solve of the head after each correction (same
   weights) for accuracy and latency.
3. `suggest` vs random: from the uncorrected model, each strategy picks 50 pool images per round
   (true labels given as corrections) up to 500 labels; held-out accuracy per round, 3 seeds (each
   seed draws its own 4,000-image pool subset). Saved as a PNG.

    python benchmarks/corrections.py --work /tmp/evo-corrections     # everything
    python benchmarks/corrections.py --per-class-train 1000 --skip-curve
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evo  # noqa: E402
import evo.data  # noqa: E402
import evo.zoo  # noqa: E402
from evo.active import Corrections, local  # noqa: E402
from evo.active.queries import QUERIES  # noqa: E402
from evo.learn.strategies.base import sub_state  # noqa: E402
from evo.learn.tracked import apply_map, from_meta, head_map, head_taps  # noqa: E402
from evo.runs import Run  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/evo-corrections"))
    p.add_argument("--per-class-train", type=int, default=None, help="training images per class (default: all 6000)")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--flags", type=int, default=200)
    p.add_argument("--cli-calls", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resolve-every", type=int, default=1, help="time the full re-solve after every N-th correction")
    p.add_argument("--skip-curve", action="store_true")
    p.add_argument("--curve-max", type=int, default=500)
    p.add_argument("--curve-step", type=int, default=50)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "corrections_results.json")
    p.add_argument("--png", type=Path, default=ROOT / "benchmarks" / "corrections_suggest.png")
    return p.parse_args(argv)


def build_run(args) -> tuple[Path, object]:
    run_dir = args.work / "run"
    stream = evo.data.class_incremental("fashion-mnist", increments=5, seed=0, per_class_train=args.per_class_train)
    if (run_dir / "config.json").is_file() and Run(run_dir).latest() == 5:
        return run_dir, stream
    t0 = time.time()
    graph0 = evo.zoo.load("efficientnet_lite0", pretrained=True, input_size=args.input_size)
    learner = evo.Learner(graph0, memory=500, progress=False)
    run = Run.create(run_dir, {"learn": {"model": "efficientnet_lite0", "strategy": "evo", "memory": 500}})
    run.commit_version(graph0, {"increment": None, "ops": [], "chosen": "initial model", "classes": graph0.classes})
    for i, inc in enumerate(stream):
        report = learner.learn(inc.train)
        run.commit_version(learner.graph_, {"increment": i, "ops": [], "chosen": "evo fast path",
                                            "classes": learner.classes_, "cost": report.cost.to_dict()},
                           state=learner.state_dict())
        print(f"increment {i}: {len(learner.classes_)} classes, {report.cost.seconds:.0f} s", flush=True)
    print(f"model built in {time.time() - t0:.0f} s", flush=True)
    return run_dir, stream


def accuracy(eng: Corrections, feats: torch.Tensor, truth: np.ndarray) -> float:
    return float((eng.logits(feats).argmax(1).numpy() == truth).mean())


def base_system(run_dir: Path):
    """(A0, B0, λ, scale) of the committed head: the re-solve reference starts from these."""
    graph, _, state = Run(run_dir).load_version()
    st = sub_state("strategy", state)
    head = head_taps(graph)
    gram, xty = apply_map(head_map(graph, head, from_meta(graph) or head), st["head.gram"].double(),
                          st["head.xty"].double())
    return gram, xty, float(st["ridge"][0])


def corrections_protocol(args, run_dir: Path, test, pool_idx, held_idx) -> dict:
    out: dict = {}
    work = args.work / "corrections_run"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    import shutil

    shutil.copytree(run_dir, work, ignore=shutil.ignore_patterns("corrections.sqlite*"))
    eng = Corrections.open(work)
    classes = eng.classes
    truth = np.array([classes.index(test.classes[y]) for y in test.labels])
    t0 = time.time()
    cache = args.work / "test_features.npz"  # the frozen backbone's features of the test split, reused by reruns
    if cache.is_file():
        npz = np.load(cache)
        pool_f, held_f = torch.from_numpy(npz["pool"]), torch.from_numpy(npz["held"])
    else:
        pool_f = eng.features(test.images[pool_idx])
        held_f = eng.features(test.images[held_idx])
        np.savez(cache, pool=pool_f.numpy(), held=held_f.numpy())
    print(f"features of 10,000 test images: {time.time() - t0:.0f} s", flush=True)
    w0 = eng.head_weight.clone()
    acc0 = accuracy(eng, held_f, truth[held_idx])
    pred = eng.logits(pool_f).argmax(1).numpy()
    wrong = [int(pool_idx[i]) for i in np.nonzero(pred != truth[pool_idx])[0]]
    print(f"held-out accuracy {acc0:.4f}; {len(wrong)} pool errors", flush=True)
    flagged, spare = wrong[:args.flags], wrong[args.flags:args.flags + args.cli_calls]
    gram, xty, lam = base_system(work)
    reg = torch.full((gram.shape[0],), lam, dtype=torch.float64)
    reg[-1] = 0.0
    a_sys, b_sys = gram + torch.diag(reg), xty.clone()
    eng.correct(test.images[spare[-1]], classes[truth[spare[-1]]])  # warm-up (first-call allocations), undone below
    eng.undo(eng.list()[-1].id)
    a_sys, b_sys = a_sys, b_sys
    lat, cpu, own, resolve_s, forward_s, resolve_acc = [], [], [], [], [], None
    resolve_cpu, forward_cpu = [], []
    for n, i in enumerate(flagged):
        t, c = time.perf_counter(), time.process_time()
        r = eng.correct(test.images[i], classes[truth[i]], source="benchmark")
        lat.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        own.append(r.holds and r.predicted == classes[truth[i]])
        t, c = time.perf_counter(), time.process_time()
        eng.features([test.images[i]])
        forward_s.append(time.perf_counter() - t)
        forward_cpu.append(time.process_time() - c)
        # the re-solve reference: the same weighted statistics, factorised and solved from scratch
        if (n + 1) % args.resolve_every and n != len(flagged) - 1:
            continue
        t, c = time.perf_counter(), time.process_time()
        st = eng._state  # noqa: SLF001  (benchmark reads the engine's live weights and local features)
        ids = list(st.live)
        z = eng._z_live(st, ids)  # noqa: SLF001  rows [φ, 1, ψ]: ψ the corrections' local features
        w = torch.tensor([st.live[i].weight for i in ids], dtype=torch.float64)
        y = torch.zeros(len(ids), len(classes), dtype=torch.float64)
        y[torch.arange(len(ids)), [st.live[i].label for i in ids]] = 1.0
        m = z.shape[1] - a_sys.shape[0]
        a = torch.block_diag(a_sys, eng.options.local_ridge * torch.eye(m, dtype=torch.float64))
        b = torch.cat([b_sys, torch.zeros(m, len(classes), dtype=torch.float64)])
        chol = torch.linalg.cholesky(a + z.T @ (w[:, None] * z))
        ref = torch.cholesky_solve(b + z.T @ (w[:, None] * y), chol)
        resolve_s.append(time.perf_counter() - t)
        resolve_cpu.append(time.process_time() - c)
        if n == len(flagged) - 1:
            zh = eng._z(st, torch.cat([held_f.double(), torch.ones(len(held_f), 1, dtype=torch.float64)], 1),  # noqa: SLF001
                        local.normalised(held_f))
            resolve_acc = float(((zh @ ref).argmax(1).numpy() == truth[held_idx]).mean())
            out["resolve_vs_rank_one_max_abs_diff"] = float((ref - eng.head_weight).abs().max())
        if (n + 1) % 50 == 0:
            print(f"{n + 1} corrections, median {1000 * statistics.median(lat):.1f} ms", flush=True)
    recs = [c for c in eng.list() if not c.undone]
    in_conflict = {a for a, b in _all_conflicts(eng)} | {b for a, b in _all_conflicts(eng)}
    holding = sum(c.holds for c in recs)
    acc1 = accuracy(eng, held_f, truth[held_idx])
    out.update({
        "flags": len(flagged), "pool_errors": len(wrong),
        "latency_ms_median": 1000 * statistics.median(lat), "latency_ms_p95": 1000 * float(np.percentile(lat, 95)),
        "cpu_ms_median": 1000 * statistics.median(cpu), "cpu_ms_p95": 1000 * float(np.percentile(cpu, 95)),
        "forward_cpu_ms_median": 1000 * statistics.median(forward_cpu),
        "resolve_cpu_ms_median": 1000 * statistics.median(resolve_cpu),
        "forward_ms_median": 1000 * statistics.median(forward_s),
        "resolve_ms_median": 1000 * statistics.median(resolve_s),
        "resolve_plus_forward_over_rank_one": (statistics.median(resolve_s) + statistics.median(forward_s))
        / statistics.median(lat),
        "held_after_own_update": float(np.mean(own)),
        "earlier_holding_after_all": holding / len(recs),
        "earlier_holding_or_conflict_after_all": sum(c.holds or c.id in in_conflict for c in recs) / len(recs),
        "weights": {"median": statistics.median(c.weight for c in recs), "max": max(c.weight for c in recs)},
        "heldout_accuracy_before": acc0, "heldout_accuracy_after": acc1, "heldout_accuracy_resolve": resolve_acc,
    })
    eng.close()
    # `evo correct` end to end, a fresh process per call
    cli = []
    for i in spare:
        png = args.work / f"flag_{i}.png"
        from PIL import Image

        Image.fromarray(test.images[i]).save(png)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "evo.cli", "correct", str(work), str(png), "--label",
                               classes[truth[i]]], capture_output=True, text=True,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        cli.append(time.perf_counter() - t)
        if proc.returncode:
            raise SystemExit(proc.stderr)
    out["cli_correct_s_median"] = statistics.median(cli)
    out["cli_last_output"] = proc.stdout.strip()
    # reopen (log replay) and undo everything in random order
    t = time.perf_counter()
    eng = Corrections.open(work)
    out["reopen_with_replay_s"] = time.perf_counter() - t
    ids = [c.id for c in eng.list() if not c.undone]
    random.Random(0).shuffle(ids)
    t = time.perf_counter()
    for cid in ids:
        eng.undo(cid)
    out["undo_ms_median"] = 1000 * (time.perf_counter() - t) / len(ids)
    out["undo_all_max_abs_diff_W"] = float((eng.head_weight - w0).abs().max())
    out["undo_all_max_abs_diff_linear"] = float(eng.scale * (eng.head_weight - w0).abs().max())
    out["heldout_accuracy_after_undo_all"] = accuracy(eng, held_f, truth[held_idx])
    eng.close()
    return out, pool_f, held_f, truth


def _all_conflicts(eng: Corrections) -> list[tuple[int, int]]:
    """Pairs that cannot both hold: near-duplicates of different labels among the live corrections."""
    st = eng._state  # noqa: SLF001
    pairs = []
    ids = list(st.live)
    for n, i in enumerate(ids):
        for j in ids[n + 1:]:
            a, b = st.live[i], st.live[j]
            if a.label != b.label and (a.sha == b.sha or float(a.unit @ b.unit) > eng.options.duplicate_cosine):
                pairs.append((i, j))
    return pairs


def suggest_curve(args, run_dir: Path, test, pool_idx, held_idx, pool_f, held_f, truth) -> dict:
    """Labels as weight-1 samples added to the head's statistics, solved exactly once per round of
    `curve_step` (the engine's per-click path would give each label its own rank-one update and,
    for a label the model got wrong, more weight; this measures which images are worth labelling)."""
    gram, xty, lam = base_system(run_dir)
    reg = torch.full((gram.shape[0],), lam, dtype=torch.float64)
    reg[-1] = 0.0
    a0 = gram + torch.diag(reg)
    scale = float(Run(run_dir).load_version()[0].meta.get("head_scale", 1.0))
    aug = lambda f: torch.cat([f.double(), torch.ones(len(f), 1, dtype=torch.float64)], 1)  # noqa: E731
    pool_x, held_x = aug(pool_f), aug(held_f)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(truth[pool_idx]), xty.shape[1]).double()

    def solve(a, b):
        return torch.cholesky_solve(b, torch.linalg.cholesky(a))

    def acc(w):
        return float(((held_x @ w).argmax(1).numpy() == truth[held_idx]).mean())

    w0 = solve(a0, xty)
    curves: dict[str, list[list[float]]] = {}
    for strategy in ("random", "margin", "entropy", "diverse"):
        fn = QUERIES.get(strategy)
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            left = list(rng.permutation(len(pool_idx))[:4000])
            a, b, w, accs, given = a0.clone(), xty.clone(), w0, [acc(w0)], 0
            while given < args.curve_max:
                proba = torch.softmax(scale * (pool_x[left] @ w), 1)
                picked, _ = fn(proba, pool_f[left], args.curve_step, rng)
                chosen = [left[j] for j in picked]
                x = pool_x[chosen]
                a, b = a + x.T @ x, b + x.T @ onehot[chosen]
                w = solve(a, b)
                accs.append(acc(w))
                left = [v for v in left if v not in set(chosen)]
                given += len(chosen)
            curves.setdefault(strategy, []).append(accs)
            print(f"suggest {strategy} seed {seed}: {accs[0]:.4f} -> {accs[-1]:.4f}", flush=True)
    return curves


def plot(curves: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(0, args.curve_max + 1, args.curve_step))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in curves.items():
        arr = 100 * np.array(runs)
        ax.plot(xs, arr.mean(0), marker="o", ms=3, label=name)
        ax.fill_between(xs, arr.min(0), arr.max(0), alpha=0.15)
    ax.set_xlabel("labels given (pool images corrected or confirmed)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("suggest vs random, Fashion-MNIST (10 classes), mean and range of 3 seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    run_dir, stream = build_run(args)
    test = stream[len(stream) - 1].test  # pooled over all 10 classes: the full test split
    order = np.random.default_rng(0).permutation(len(test))
    pool_idx, held_idx = np.sort(order[: len(test) // 2]), np.sort(order[len(test) // 2:])
    result, pool_f, held_f, truth = corrections_protocol(args, run_dir, test, pool_idx, held_idx)
    print(json.dumps(result, indent=1), flush=True)
    doc = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
           "machine": f"shared 2-core VM, no GPU ({platform.processor() or platform.machine()}), "
                      f"torch.set_num_threads({args.threads})",
           "per_class_train": args.per_class_train or 6000, "corrections": result}
    if not args.skip_curve:
        doc["suggest_curves"] = suggest_curve(args, run_dir, test, pool_idx, held_idx, pool_f, held_f, truth)
        plot(doc["suggest_curves"], args)
    args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
