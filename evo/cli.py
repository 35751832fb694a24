"""The `evo` command: parses arguments, calls the library, prints. Errors are one readable line, exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from evo.errors import EvoError

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def deco(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return deco


@command("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
    import evo.ops as ops
    from evo.zoo import resolve

    graph = resolve(args.model, args.input_size, pretrained=not args.random_init)
    say(graph.summary() if args.layers else graph.summary().split("\n")[0])
    if graph.classes:
        shown = ", ".join(graph.classes[:8]) + (" ..." if len(graph.classes) > 8 else "")
        say(f"classes ({len(graph.classes)}): {shown}")
    say("growth sites:")
    for name in ops.list_ops():
        found = ops.sites(graph, name)
        preview = "; ".join(_site_text(s) for s in found[: args.max_sites])
        more = f" ... (+{len(found) - args.max_sites})" if len(found) > args.max_sites else ""
        say(f"  {name:<12} {len(found):>4}  {preview}{more}")
    return 0


@command("launch")
def cmd_launch(args: argparse.Namespace) -> int:
    from evo.search.launch import launch

    launch(args.space, run_dir=args.run_dir, ray_address=args.ray_address, storage=args.storage,
           dashboard=args.dashboard, num_cpus=args.num_cpus, say=say)
    return 0


@command("resume")
def cmd_resume(args: argparse.Namespace) -> int:
    from evo.search.launch import resume

    resume(args.run_dir, ray_address=args.ray_address, storage=args.storage, dashboard=args.dashboard,
           num_cpus=args.num_cpus, say=say)
    return 0


@command("learn")
def cmd_learn(args: argparse.Namespace) -> int:
    from evo.learn_run import learn_from_data

    learn_from_data(args.model, args.data, run_dir=args.run_dir, strategy=args.strategy, memory=args.memory,
                    input_size=args.input_size, head=args.head, allow_duplicates=args.allow_duplicates,
                    progress=not args.no_progress, say=say)
    return 0


@command("status")
def cmd_status(args: argparse.Namespace) -> int:
    from evo.search.launch import status

    say(status(args.run_dir))
    return 0


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0, 9), *range(11, 32), 127]}


def printable(text: str) -> str:
    """`text` with control characters (e.g. from a class folder's name) escaped, so they cannot drive the terminal."""
    return str(text).translate(_CONTROL)


def say(text: str) -> None:
    """Print one message to stdout, control characters escaped."""
    print(printable(text), flush=True)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


def _site_text(site: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in site.items())


# -- evo predict RUN VIDEO: per-shot and whole-clip predictions (video block) -----------------------


def run_learner(run_dir: str, version: int | None = None):
    """A Learner restored from a run's version (default: the latest) that can `predict_proba`."""
    from evo.learn import Learner
    from evo.runs import Run

    graph, _, state = Run.open(run_dir).load_version(version)
    if graph.head is None or not graph.classes:
        raise EvoError(f"run {run_dir}: its version has no class list to predict; learn an increment first")
    # prediction reads only the version's graph; "naive" keeps no strategy state or memory to restore
    return Learner(graph, memory=1, strategy="naive", progress=False).load_state_dict(state, graph)


def predict_video_file(learner, path: str, args: argparse.Namespace):
    import numpy as np
    import torch

    from evo.data.video.predict import predict_video

    embed = head = None
    if args.aggregate == "features":
        net, pre = learner.graph_.to_module().eval(), learner.preprocess

        def embed(frames: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return net.forward_features(pre(frames)).double().numpy()

        def head(features: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(net.forward_head(torch.as_tensor(features).float()).double(), 1).numpy()

    return predict_video(path, learner.predict_proba, learner.classes_, fps=args.fps, detector=args.detector,
                         threshold=args.threshold, smooth=args.smooth, aggregate=args.aggregate, embed=embed,
                         head=head)


@command("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    import json

    learner = run_learner(args.run_dir, args.version)
    result = predict_video_file(learner, args.video, args)
    if args.strip:
        from evo.data.video.strip import shot_strip

        shot_strip(result).save(args.strip)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"{result.path}: {result.label} ({result.probability:.1%}) over {len(result.shots)} shots, "
          f"{result.frames} frames sampled of {result.decoded} decoded in {result.seconds:.1f} s")
    print(f"{'shot':>4}  {'start':>8}  {'end':>8}  {'class':<24} probability")
    for s in result.shots:
        print(f"{s.index:>4}  {s.start:>7.2f}s  {s.end:>7.2f}s  {s.label:<24} {s.probability:.3f}")
    if args.strip:
        print(f"keyframe strip: {args.strip}")
    return 0


def add_predict_parser(sub) -> None:
    pr = sub.add_parser("predict", help="per-shot and whole-clip predictions for a video with a run's model")
    pr.add_argument("run_dir", help="a run folder; its latest version predicts")
    pr.add_argument("video", help="a video file (mp4, mkv, avi, mov, webm, ...)")
    pr.add_argument("--json", action="store_true", help="machine-readable output")
    pr.add_argument("--version", type=int, default=None, help="model version (default: the latest)")
    pr.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (default 2)")
    pr.add_argument("--detector", default="content", help="shot detector: content (PySceneDetect) or histogram")
    pr.add_argument("--threshold", type=float, default=None, help="shot-cut threshold (default: the detector's)")
    pr.add_argument("--smooth", type=int, default=0, help="average each shot with this many neighbours a side")
    pr.add_argument("--aggregate", choices=("proba", "features"), default="proba",
                    help="mean of frame probabilities (default) or of features before the head")
    pr.add_argument("--strip", default=None, help="also save a PNG strip of keyframes captioned with their labels")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit code 2), like every other evo error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, printable(f"{self.prog}: error: {message} (see {self.prog} --help)") + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="evo", description="Keep a trained CNN learning.")
    p.add_argument("--version", action="version", version=f"evo {__import__('evo').__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ins = sub.add_parser("inspect", help="print a model's layers, parameters, FLOPs and growth sites")
    ins.add_argument("model", help="a saved model folder, or a zoo name such as efficientnet_lite0")
    ins.add_argument("--input-size", type=positive_int, default=None, help="input side in pixels (zoo models)")
    ins.add_argument("--random-init", action="store_true", help="zoo models: skip pretrained weights")
    ins.add_argument("--layers", action=argparse.BooleanOptionalAction, default=True,
                     help="print the per-layer table (default: yes)")
    ins.add_argument("--max-sites", type=int, default=4, help="sites to list per operator")
    for name, help_text in (("launch", "start a growth search from a search-space YAML"),
                            ("resume", "continue a run after a crash or kill")):
        sp = sub.add_parser(name, help=help_text)
        if name == "launch":
            sp.add_argument("space", help="search space YAML, e.g. search_spaces/fashion_quick.yaml")
            sp.add_argument("--run-dir", default=None, help="run folder (default runs/<space name>)")
        else:
            sp.add_argument("run_dir", help="the run folder to continue, e.g. runs/fashion_quick")
        sp.add_argument("--ray-address", default=None, help="join a running Ray cluster (HOST:PORT)")
        sp.add_argument("--storage", default=None,
                        help="Optuna storage URL, e.g. postgresql://user:pw@host/db (default: journal file in the run)")
        sp.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on 127.0.0.1")
        sp.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs for a local Ray cluster (default: all)")
    le = sub.add_parser("learn", help="learn one increment from a labelled image folder or CSV; commit a version")
    le.add_argument("model", help="a run folder, a saved model folder, or a zoo name")
    le.add_argument("--data", required=True,
                    help="image folder (one subfolder per class), CSV manifest (path,label), or builtin:digits / "
                         "builtin:fashion-mnist")
    le.add_argument("--run-dir", default=None, help="run folder for a new run (default runs/learn-<model>)")
    le.add_argument("--strategy", default=None,
                    help="learning strategy (default: the run's, else evo, the closed-form fast path)")
    le.add_argument("--memory", type=int, default=None, help="exemplar memory budget in images (default: the run's, "
                                                             "else 500)")
    le.add_argument("--head", choices=["auto", "reset", "keep"], default=None,
                    help="first learn only: reset replaces the model's classes by the data's; keep keeps them; auto "
                         "resets unless a class name matches")
    le.add_argument("--allow-duplicates", action="store_true", help="learn images this run has learned before")
    le.add_argument("--input-size", type=positive_int, default=None, help="input side in pixels (zoo models)")
    le.add_argument("--no-progress", action="store_true", help="no progress bars")
    st = sub.add_parser("status", help="print a run's lineage and latest metrics")
    st.add_argument("run_dir")
    add_predict_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Library warnings (e.g. each unreadable image) stay off the terminal: commands report a summary,
    # and an error is one line.
    logging.getLogger("evo").setLevel(logging.ERROR)
    try:
        return _COMMANDS[args.command](args)
    except EvoError as e:
        print(printable(f"evo {args.command}: error: {e}").replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"evo {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `evo inspect ... | head -1`: the reader is gone, so stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


# ---- evo report (issue 11): one block, so it merges beside other helpers' commands ----------------------
@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from evo.report import write_report

    write_report(args.run_dir, out=args.out, predict=args.predict)
    return 0


_build_parser_before_report = build_parser


def build_parser() -> argparse.ArgumentParser:  # noqa: F811  (extends the parser above with `report`)
    p = _build_parser_before_report()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    rp = sub.add_parser("report", help="write a run's figures as RUN/report/index.html, PNGs and summary.md")
    rp.add_argument("run_dir", help="the run folder, e.g. runs/fashion_quick")
    rp.add_argument("--out", default=None, help="report folder (default RUN/report)")
    rp.add_argument("--predict", action=argparse.BooleanOptionalAction, default=True,
                    help="run every version on the run's test split for the confusion matrix and per-class "
                         "forgetting (default: yes)")
    return p


if __name__ == "__main__":
    sys.exit(main())
