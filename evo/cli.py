"""The `evo` command: parses arguments, calls the library, prints. Errors are one readable line, exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from evo.report import write_report

    write_report(args.run_dir, out=args.out, predict=args.predict, videos=args.video, max_videos=args.videos)
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


def _int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= `low`."""
    what = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}; got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
_count = _int_at_least(0)  # a number of things to show or use: 0 means none


def _seconds(text: str) -> float:
    """argparse type: seconds, as `12.5` or `12.5s`."""
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds such as 12.5s; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds; got {text!r}")
    return value


def _site_text(site: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in site.items())


# ---- prediction, corrections and active learning (evo.active; videos through evo.data.video) ----------


def _is_video(path: str) -> bool:
    from evo.data.video import VIDEO_EXTENSIONS

    return Path(path).suffix.lower() in VIDEO_EXTENSIONS and Path(path).is_file()


def _predict_video(eng, path: str, args: argparse.Namespace):
    from evo.active.video import predict_video

    return predict_video(eng, path, fps=args.fps, detector=args.detector, threshold=args.threshold,
                         smooth=args.smooth, aggregate=args.aggregate)


@command("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from evo.active import Corrections
    from evo.active.engine import predict_paths

    videos = [p for p in args.inputs if _is_video(p)]
    images = [p for p in args.inputs if p not in videos]
    if args.strip and not Path(args.strip).resolve().parent.is_dir():  # known before the videos are decoded
        raise EvoError(f"--strip {args.strip}: folder {Path(args.strip).parent} does not exist; create it or name "
                       "a file in an existing folder")
    with Corrections.open(args.run_dir, write=False, version=args.version) as eng:
        found = predict_paths(eng, images) if images else []
        clips = [_predict_video(eng, v, args) for v in videos]
        if args.strip:
            import io

            from evo.data.video.strip import shot_strip
            from evo.fsutil import write_bytes_atomic

            for i, clip in enumerate(clips):
                target = args.strip if len(clips) == 1 else str(Path(args.strip).with_suffix(f".{i}.png"))
                png = io.BytesIO()
                shot_strip(clip).save(png, format="PNG")
                write_bytes_atomic(Path(target), png.getvalue())
        if args.json:
            say(json.dumps({"model_version": eng.model_version, "predictions": [
                {"image": path, "label": p.label, "probability": p.probability,
                 "top": [{"label": c, "probability": v} for c, v in p.top]} for path, p in found],
                "videos": [c.to_dict() for c in clips]}, indent=1))
            return 0
        for path, p in found:
            top = ", ".join(f"{c} {v:.3f}" for c, v in p.top)
            say(f"{path}\t{p.label}\t{p.probability:.3f}\t(top: {top})")
        for clip in clips:
            say(f"{clip.path}: {clip.label} ({clip.probability:.1%}) over {len(clip.shots)} shots, "
                f"{clip.frames} frames sampled of {clip.decoded} decoded in {clip.seconds:.1f} s")
            say(f"{'shot':>4}  {'start':>8}  {'end':>8}  {'class':<24} probability")
            for sh in clip.shots:
                say(f"{sh.index:>4}  {sh.start:>7.2f}s  {sh.end:>7.2f}s  {sh.label:<24} {sh.probability:.3f}")
    return 0


def _shot_correction(eng, args: argparse.Namespace):
    """A video shot's correction: its keyframes' mean feature (the shot as the head sees it when it
    averages features), logged with the middle keyframe as the image."""
    from evo.data.video.predict import shot_frames

    if (args.shot is None) == (args.at is None):
        raise EvoError(f"{args.image} is a video: give the shot to correct with --shot N or --at SECONDS")
    frames, shot = shot_frames(args.image, shot=args.shot, at=args.at)
    feats = eng.features(frames).mean(dim=0)
    return eng.correct(frames[len(frames) // 2], args.label, source="cli",
                       external_id=f"{args.image}#shot{shot.index}", features=feats), shot


@command("correct")
def cmd_correct(args: argparse.Namespace) -> int:
    from evo.active import Corrections

    with Corrections.open(args.run_dir) as eng:
        if _is_video(args.image):
            r, shot = _shot_correction(eng, args)
            say(f"{args.image}: shot {shot.index} ({shot.start:.2f}-{shot.end:.2f} s)")
        else:
            if args.shot is not None or args.at is not None:
                raise EvoError("--shot and --at apply to a video; this is an image")
            r = eng.correct(args.image, args.label, source="cli")
        live = sum(1 for c in eng.list() if not c.undone and c.id != r.id)
        say(f"correction {r.id}: {args.image} {r.previous} -> {r.label}, now predicted {r.predicted} "
              f"(p={r.probability:.3f}), weight {r.weight:.3g}, {1000 * r.seconds:.1f} ms [{eng.model_version}]")
        if not r.holds:
            say(f"correction {r.id} does not hold: it needs more than the weight cap")
        say(f"earlier corrections: {live - len(r.broken)}/{live} hold" +
              (f"; no longer holding: {', '.join(map(str, r.broken))}" if r.broken else ""))
        for a, b in r.conflicts:
            say(f"conflict: correction {a} conflicts with correction {b}")
    return 0


@command("undo")
def cmd_undo(args: argparse.Namespace) -> int:
    from evo.active import Corrections

    with Corrections.open(args.run_dir) as eng:
        broken = eng.undo(args.id)
        say(f"undid correction {args.id} [{eng.model_version}]" +
              (f"; no longer holding: {', '.join(map(str, broken))}" if broken else ""))
    return 0


@command("corrections")
def cmd_corrections(args: argparse.Namespace) -> int:
    from evo.active import Corrections

    with Corrections.open(args.run_dir, write=False) as eng:
        rows = eng.list()
        say(f"{len(rows)} correction(s) [{eng.model_version}]")
        say(f"{'id':>4}  {'time':<19}  {'image':<12}  {'from -> to':<32}  {'weight':>8}  state")
        for c in rows:
            state = "undone" if c.undone else ("holds" if c.holds else "does not hold")
            say(f"{c.id:>4}  {c.created:<19}  {c.image_sha256[:12]:<12}  "
                  f"{(c.previous + ' -> ' + c.label)[:32]:<32}  {c.weight:>8.3g}  {state}")
    return 0


@command("suggest")
def cmd_suggest(args: argparse.Namespace) -> int:
    from evo.active import Corrections

    with Corrections.open(args.run_dir, write=False) as eng:
        for rank, s in enumerate(eng.suggest(args.pool, k=args.k, strategy=args.strategy, seed=args.seed), 1):
            say(f"{rank:>3}  {s.path}\t{s.predicted} ({s.probability:.3f})\tscore {s.score:.4f}")
    return 0


def _active_parsers(sub: argparse._SubParsersAction) -> None:
    from evo.active import QUERIES

    pr = sub.add_parser("predict", help="predict images or videos with a run's model (latest version + corrections)")
    pr.add_argument("run_dir")
    pr.add_argument("inputs", nargs="+", help="image files or folders, and/or video files (per-shot predictions)")
    pr.add_argument("--json", action="store_true", help="machine-readable output")
    pr.add_argument("--version", type=int, default=None, help="model version (default: the latest)")
    pr.add_argument("--fps", type=float, default=2.0, help="videos: frames sampled per second (default 2)")
    pr.add_argument("--detector", default="content", help="videos: shot detector, content (PySceneDetect) or histogram")
    pr.add_argument("--threshold", type=float, default=None, help="videos: shot-cut threshold (default: the detector's)")
    pr.add_argument("--smooth", type=_count, default=0, help="videos: average each shot with this many neighbours a side")
    pr.add_argument("--aggregate", choices=("proba", "features"), default="proba",
                    help="videos: mean of frame probabilities (default) or of features before the head")
    pr.add_argument("--strip", default=None, help="videos: save a PNG strip of keyframes captioned with their labels")
    co = sub.add_parser("correct", help="fix the model's prediction of one image (or a video's shot), in milliseconds")
    co.add_argument("run_dir")
    co.add_argument("image", help="an image, or a video with --shot N / --at SECONDS")
    co.add_argument("--label", required=True, help="the right class (a new name adds the class)")
    co.add_argument("--shot", type=int, default=None, help="videos: the shot number to correct")
    co.add_argument("--at", type=_seconds, default=None, help="videos: correct the shot playing at this time, e.g. 12.5s")
    un = sub.add_parser("undo", help="take one correction back out exactly")
    un.add_argument("run_dir")
    un.add_argument("id", type=positive_int)
    cs = sub.add_parser("corrections", help="list a run's corrections")
    cs.add_argument("run_dir")
    su = sub.add_parser("suggest", help="rank unlabelled images by how much labelling them is worth")
    su.add_argument("run_dir")
    su.add_argument("--pool", required=True, nargs="+", help="folder(s) or files of unlabelled images")
    su.add_argument("-k", type=_count, default=20)
    su.add_argument("--strategy", default="margin", choices=QUERIES.names())
    su.add_argument("--seed", type=_count, default=0)


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
    ins.add_argument("--max-sites", type=_count, default=4, help="sites to list per operator")
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
    rp = sub.add_parser("report", help="write a run's figures as RUN/report/index.html, PNGs and summary.md")
    rp.add_argument("run_dir", help="the run folder, e.g. runs/fashion_quick")
    rp.add_argument("--out", default=None, help="report folder (default RUN/report)")
    rp.add_argument("--predict", action=argparse.BooleanOptionalAction, default=True,
                    help="run every version on the run's test split for the confusion matrix and per-class "
                         "forgetting, and the video strips (default: yes)")
    rp.add_argument("--video", action="append", default=[], metavar="FILE",
                    help="also show this video's shots with the latest model's labels (repeatable)")
    rp.add_argument("--videos", type=_count, default=3, metavar="N",
                    help="a run learnt from videos: show N of its held-out clips (default 3; 0: none)")
    _active_parsers(sub)
    _add_serve_parser(sub)
    return p


# ---- evo serve (Label Studio ML backend) -------------------------------------------------------------
@command("serve")
def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from evo.serve import serve

    serve(args.run_dir, host=args.host, port=args.port, token=args.token or os.environ.get("EVO_SERVE_TOKEN"),
          ls_url=args.ls_url or os.environ.get("LABEL_STUDIO_URL"),
          ls_key=args.ls_key or os.environ.get("LABEL_STUDIO_API_KEY"), threads=args.threads)
    return 0


def _add_serve_parser(sub) -> None:
    sv = sub.add_parser("serve", help="serve a run as a Label Studio ML backend that learns from every annotation")
    sv.add_argument("run_dir", help="the run folder to serve, e.g. runs/NAME")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    sv.add_argument("--token", default=None, help="require this token on every request (or EVO_SERVE_TOKEN)")
    sv.add_argument("--ls-url", default=None, help="Label Studio URL for images (or LABEL_STUDIO_URL; "
                    "default: the hostname Label Studio sends in /setup)")
    sv.add_argument("--threads", type=int, default=1, help="torch threads (default 1: lowest latency per "
                    "annotation on a shared machine; more can speed up large bulk predictions)")
    sv.add_argument("--ls-key", default=None, help="Label Studio API key or personal access token "
                    "(or LABEL_STUDIO_API_KEY; default: the token sent in /setup)")


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


if __name__ == "__main__":
    sys.exit(main())
