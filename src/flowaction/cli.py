"""The command line: the one place that parses arguments. Each subcommand is one thin function
that calls one function of ``flowaction.commands`` (imported when the subcommand runs, so that
``--help`` and ``keys`` start fast)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from flowaction import __version__
from flowaction.config import Config, ConfigError, flatten, nearest, to_dict, valid_keys

DESCRIPTION = ("flowaction: recognise actions in video with a 3D ResNet on optical flow that a small "
               "network learns inside the model, without flow ground truth.")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help``, unless the option is required or its help already says
    what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.required:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with the defaults in every ``--help`` and "did you mean" for a mistyped choice."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match and (near := nearest(match.group(1), re.findall(r"'([^']*)'", match.group(2)))):
            message = f"{message}; did you mean {' or '.join(near)}?"
        super().error(message)

    def reject_unknown(self, extra: list[str]) -> None:
        """Exit with an error naming ``extra`` (unknown options), each with its nearest option."""
        options = [o for action in self._actions for o in action.option_strings]
        hints = [f"{word}: did you mean {' or '.join(near)}?" for word in extra
                 if word.startswith("-") and (near := nearest(word.split("=", 1)[0], options))]
        self.error(f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else ""))


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optim.lr=3e-4 model.depth=10 (see `flowaction keys`)")


def _add_run_dir(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--resume", action="store_true", help=f"continue the {what} in OUT (from OUT/last.pt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="OUT holds a run: start again, moving its files to OUT/replaced-<time>/")
    parser.add_argument("--delete-old", action="store_true", help="with --overwrite: delete the old run's files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (also off when not a terminal)")


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only when asked for and the output is a terminal (logs stay readable)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _command_line(args: argparse.Namespace, leave_out: tuple[str, ...] = ()) -> str:
    """The command line that ran (without the words ``leave_out``), as a study's results and a
    flownet.pt record it."""
    argv = sys.argv[1:] if args.argv is None else args.argv
    return "flowaction " + " ".join(str(word) for word in argv if word not in leave_out)


def _cmd_train(args: argparse.Namespace) -> int:
    from flowaction.commands.train import run_train

    summary = run_train(args.out, args.config, args.data, args.overrides, resume=args.resume,
                        auto_resume=args.auto_resume, overwrite=args.overwrite, delete_old=args.delete_old,
                        progress=_progress(args))
    if summary is not None:  # rank 0 of a torchrun
        print(json.dumps(summary, indent=1))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from flowaction.commands.evaluate import run_eval

    run_eval(args.checkpoint, args.data, args.out, args.split, args.device, progress=_progress(args))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from flowaction.commands.demo import run_demo

    metrics = run_demo(args.out, preset=args.preset, overrides=args.overrides, resume=args.resume,
                       overwrite=args.overwrite, delete_old=args.delete_old, progress=_progress(args))
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}, indent=1))
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from flowaction.commands.ablate import run_ablation
    from flowaction.commands.rundir import run_lock

    def items(text: str) -> list[str]:
        return [item.strip() for item in text.split(",") if item.strip()]

    command = _command_line(args, leave_out=("--summary-only",))
    with run_lock(args.out):
        path = run_ablation(
            args.config, items(args.runs), args.seeds, args.out, args.overrides,
            [int(n) for n in items(args.sweep)] if args.sweep else None,
            items(args.sweep_runs) if args.sweep_runs else None,
            args.keep_checkpoints, command=command, summary_only=args.summary_only, progress=_progress(args),
        )
    print(path.read_text())
    return 0


def _cmd_pretrain_flow(args: argparse.Namespace) -> int:
    from flowaction.commands.pretrain import run_pretrain

    summary = run_pretrain(args.out, args.steps, args.eval_every, args.config, args.data, args.videos,
                           args.overrides, resume=args.resume, overwrite=args.overwrite, delete_old=args.delete_old,
                           progress=_progress(args), command=_command_line(args))
    print(f"wrote {summary['weights']} after {summary['steps']} steps ({summary['wall_seconds']:.0f} s); "
          f"use it with model.flow_init={summary['weights']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from flowaction.commands.predict import run_predict

    return run_predict(args.paths, args.checkpoint, args.clips, args.top_k, args.timeline, args.save_flow, args.json,
                       args.device)


def _cmd_stream(args: argparse.Namespace) -> int:
    from flowaction.inference.stream import describe_stream, run_stream

    if args.every < 1:
        raise ValueError("--every must be >= 1")
    summary = run_stream(args.checkpoint, args.source, args.every, args.top_k, args.device,
                         args.as_fast_as_possible, args.show, args.json, args.max_frames)
    print(describe_stream(summary))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from flowaction.inference.export import export_model

    report = export_model(args.checkpoint, args.out, args.format)
    print(f"exported {report['input']} model as {args.format}: {', '.join(report['files'].values())}; "
          f"max |difference| to PyTorch {max(report['max_abs_diff'].values()):.2e}")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    defaults = flatten(to_dict(Config()))
    print("\n".join(f"{key} = {defaults[key]!r}" for key in valid_keys()))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from flowaction.commands.prepare import run_prepare

    run_prepare(
        args.kind, args.root, args.out, splits_dir=args.splits, split=args.split, workers=args.workers,
        size=args.size, height=args.height, width=args.width, min_frames=args.min_frames,
        shard_videos=args.shard_videos, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        val_from_train=args.val_from_train, train_list=args.train_list, val_list=args.val_list, seed=args.seed,
        progress=_progress(args), ray_address=args.ray,
    )
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from flowaction.commands.generate import run_generate

    counts = tuple(int(n) for n in args.per_class.split(",")) if re.fullmatch(r"\d+,\d+,\d+", args.per_class) else ()
    if not counts:
        raise ValueError(f"--per-class takes three counts TRAIN,VAL,TEST, e.g. 60,10,20; got {args.per_class!r}")
    run_generate(args.out, args.kind, args.size, args.frames, args.classes, counts, args.seed, args.videos,
                 args.workers, progress=_progress(args))
    return 0


def _cmd_flow(args: argparse.Namespace) -> int:
    from flowaction.commands.flow import describe_flow, run_flow
    from flowaction.data.decode import DecodeError

    if args.stride != "train" and not (args.stride.isdigit() and int(args.stride) >= 1):
        raise ValueError(f"--stride must be a positive integer or 'train', got {args.stride!r}")
    try:
        summary = run_flow(
            args.video, args.out, args.method, args.checkpoint, size=args.size, crop=args.crop,
            stride=None if args.stride == "train" else int(args.stride), max_frames=args.max_frames,
            batch_size=args.batch_size, device=args.device, progress=_progress(args), log=print,
            overwrite=args.overwrite,
        )
    except DecodeError as error:  # a corrupt or unsupported file is a user error, not a crash
        print(f"flowaction flow: error: {args.video}: cannot decode video: {error}", file=sys.stderr)
        return 2
    print("\n".join(describe_flow(summary, Path(args.out))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from flowaction.commands.ablate import VARIANTS

    parser = _Parser(prog="flowaction", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"flowaction {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("--config", type=Path, default=None, help="YAML config (defaults if omitted)")
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--data", type=Path, default=None, help="prepared cache (else: generated benchmark)")
    _add_run_dir(train, "run")
    train.add_argument("--auto-resume", action="store_true",
                       help="continue OUT's run if it has a last.pt, else start one (for torchrun --max-restarts)")
    _add_overrides(train)
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("eval", help="score a checkpoint on a split of a cache")
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt of a run")
    evaluate.add_argument("--data", type=Path, required=True, help="prepared cache directory")
    evaluate.add_argument("--split", default=None, help="split to score (default: test if the cache has it, else val)")
    evaluate.add_argument("--out", type=Path, required=True,
                          help="output directory (eval.json, confusion.png, flows.png)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar (also off when not a terminal)")
    evaluate.set_defaults(func=_cmd_eval)

    demo = sub.add_parser("demo", help="generate the benchmark, train the joint model, report")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"),
                      help="run directory (data, checkpoints, metrics.json, pictures)")
    demo.add_argument("--preset", default="actions", help="actions (default: the articulated-action benchmark), actions-study "
                      "(its study's longer recipe), motion (the rigid-motion world) or tiny (seconds, for tests)")
    _add_run_dir(demo, "demo")
    _add_overrides(demo)
    demo.set_defaults(func=_cmd_demo)

    prep = sub.add_parser("prepare", help="decode UCF101 / HMDB51 / folder-per-class videos into a clip cache")
    prep.add_argument("kind", choices=("ucf101", "hmdb51", "folder"),
                      help="layout of --root: ucf101, hmdb51 (with their split files) or folder (one folder per class)")
    prep.add_argument("--root", type=Path, required=True, help="the videos: ROOT/<class>/<video>")
    prep.add_argument("--out", type=Path, required=True, help="cache directory (a rerun resumes it)")
    prep.add_argument("--splits", type=Path, default=None, help="official split files (default: found near ROOT)")
    prep.add_argument("--split", type=int, default=1, help="official split 1-3 (ucf101, hmdb51)")
    prep.add_argument("--workers", type=int, default=1, help="decoding processes (0: one per core)")
    prep.add_argument("--size", type=int, default=64, help="short side of the stored frames in pixels")
    prep.add_argument("--height", type=int, default=None, help="exact stored height (with --width)")
    prep.add_argument("--width", type=int, default=None, help="exact stored width (with --height)")
    prep.add_argument("--min-frames", type=int, default=8, help="shorter videos are skipped and reported")
    prep.add_argument("--shard-videos", type=int, default=128, help="videos per shard")
    prep.add_argument("--val-fraction", type=float, default=0.2, help="folder: share of each class put in val")
    prep.add_argument("--test-fraction", type=float, default=0.0,
                      help="folder: share of each class put in test (carved before val; 0: no test split)")
    prep.add_argument("--val-from-train", type=float, default=0.0,
                      help="ucf101/hmdb51: share of each class's train videos moved to val (0: official protocol)")
    prep.add_argument("--train-list", type=Path, default=None, help="folder: own train list (<class>/<file> lines)")
    prep.add_argument("--val-list", type=Path, default=None, help="folder: own val list (<class>/<file> lines)")
    prep.add_argument("--seed", type=int, default=0, help="seed of the val split")
    prep.add_argument("--ray", default=None, metavar="ADDRESS",
                      help="spread decoding over a Ray cluster: auto, ray://HOST:PORT, or local (a Ray instance "
                           "started here with --workers CPUs); --out must be shared storage")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=_cmd_prepare)

    flow = sub.add_parser("flow", help="optical flow of a video (learned, DIS, Farneback): .flo, GIFs, panel, summary")
    flow.add_argument("video", type=Path, help="any video file PyAV decodes")
    flow.add_argument("--checkpoint", type=Path, default=None, help="needed for --method learned (all skips learned without one)")
    flow.add_argument("--out", type=Path, required=True, help="output directory")
    flow.add_argument("--method", choices=("learned", "dis", "farneback", "all"), default="learned",
                      help="the checkpoint's flow network, OpenCV DIS or Farneback, or all of them side by side")
    flow.add_argument("--size", type=int, default=None, help="short side to decode at (default: the training's)")
    flow.add_argument("--crop", type=int, default=0,
                      help="centre-crop side in pixels, e.g. the checkpoint's data.crop (0: the whole frame)")
    flow.add_argument("--stride", default="1",
                      help="triplet stride: 1 = a flow per frame; 'train' = the checkpoint's model.triplet_stride")
    flow.add_argument("--max-frames", type=int, default=None, help="use only the first N frames")
    flow.add_argument("--batch-size", type=int, default=32, help="triplets per forward pass")
    flow.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    flow.add_argument("--overwrite", action="store_true", help="OUT holds a flow run: replace its files")
    flow.add_argument("--no-progress", action="store_true", help="no progress bar")
    flow.set_defaults(func=_cmd_flow)

    ablate = sub.add_parser("ablate", help="variants x seeds on the same data, and a data-size sweep")
    ablate.add_argument("--config", type=Path, default=None,
                        help="base YAML config of every run (default: the built-in defaults, on generated data)")
    ablate.add_argument("--runs", default="learned,frames,dis",
                        help="comma-separated variants: " + ", ".join(VARIANTS))
    ablate.add_argument("--seeds", type=int, default=3, help="runs per variant, seeds 0..N-1")
    ablate.add_argument("--out", type=Path, required=True,
                        help="study directory (one run per variant and seed, results.md, ablation.png, "
                             "sample_efficiency.png)")
    ablate.add_argument("--sweep", default="", help="training clips per class, e.g. 5,10,20,50")
    ablate.add_argument("--sweep-runs", default="", help="variants of the sweep (default learned,frames,dis)")
    ablate.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each run's best.pt and last.pt (deleted after scoring by default)")
    ablate.add_argument("--summary-only", action="store_true", help="train nothing; summarise the finished runs")
    ablate.add_argument("--no-progress", action="store_true", help="no progress bars (also off when not a terminal)")
    _add_overrides(ablate)
    ablate.set_defaults(func=_cmd_ablate, argv=None)

    pre = sub.add_parser("pretrain-flow", help="train the flow network alone on unlabeled video (flow losses only)")
    pre.add_argument("--data", type=Path, default=None, help="a prepared cache (default: the generated benchmark)")
    pre.add_argument("--videos", type=Path, default=None, help="a folder of videos at any depth, prepared first")
    pre.add_argument("--out", type=Path, required=True, help="output directory (flownet.pt, curves.png, metrics.csv)")
    pre.add_argument("--config", type=Path, default=None, help="YAML config (default: the packaged pretrain preset)")
    pre.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    pre.add_argument("--eval-every", type=int, default=200, help="validate and write flownet.pt every N steps")
    _add_run_dir(pre, "pre-training")
    _add_overrides(pre)
    pre.set_defaults(func=_cmd_pretrain_flow, argv=None)

    pred = sub.add_parser("predict", help="classify video files with a trained model (top-k, timeline, flows)")
    pred.add_argument("paths", nargs="+", type=Path, help="video files or folders of videos")
    pred.add_argument("--checkpoint", type=Path, required=True, help="best.pt, or a file from `flowaction export`")
    pred.add_argument("--top-k", type=int, default=5, help="classes reported per video")
    pred.add_argument("--clips", type=int, default=10, help="uniformly spaced clips averaged per video")
    pred.add_argument("--timeline", type=float, default=None, help="also classify every SECONDS-long segment")
    pred.add_argument("--save-flow", type=Path, default=None, help="write the flow the model saw as pictures here")
    pred.add_argument("--json", type=Path, default=None, help="write every result to this JSON file")
    pred.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    pred.set_defaults(func=_cmd_predict)

    stream = sub.add_parser("stream", help="recognise actions live from a camera, file or URL")
    stream.add_argument("--checkpoint", type=Path, required=True, help="best.pt, or a file from `flowaction export`")
    stream.add_argument("--source", default="0", help="camera index, video file or stream URL")
    stream.add_argument("--every", type=int, default=1, help="predict every N frames once a clip is full")
    stream.add_argument("--top-k", type=int, default=5, help="classes shown per prediction")
    stream.add_argument("--show", action="store_true", help="show the frames with the label in a window")
    stream.add_argument("--json", type=Path, default=None, help="write one JSON line per prediction")
    stream.add_argument("--as-fast-as-possible", action="store_true",
                        help="a file: process every frame as fast as possible instead of at its frame rate")
    stream.add_argument("--max-frames", type=int, default=None, help="stop after N processed frames")
    stream.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    stream.set_defaults(func=_cmd_stream)

    export = sub.add_parser("export", help="export a checkpoint to ONNX or torch.export, checked against PyTorch")
    export.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt of a run")
    export.add_argument("--format", choices=("onnx", "torch-export"), default="onnx",
                        help="onnx (ONNX Runtime, TensorRT) or torch-export (a .pt2 for torch.export.load)")
    export.add_argument("--out", type=Path, required=True, help="model.onnx or model.pt2 (other graphs beside it)")
    export.set_defaults(func=_cmd_export)

    gen = sub.add_parser("generate", help="a generated benchmark as a clip cache (and as video files)")
    gen.add_argument("--kind", choices=("actions", "motion", "scenes"), default="actions",
                     help="actions: a figure acting over photographs; motion: rigid shapes; scenes: photo layers (flow)")
    gen.add_argument("--out", type=Path, required=True, help="output folder: OUT/cache, and OUT/videos with --videos")
    gen.add_argument("--videos", action="store_true", help="also write every clip as OUT/videos/<class>/<split>-N.mp4")
    gen.add_argument("--size", type=int, default=48, help="frame side in pixels")
    gen.add_argument("--frames", type=int, default=16, help="frames per clip")
    gen.add_argument("--classes", type=int, default=0, help="the first N classes (0: the kind's default: motion 8, actions 14, scenes 1)")
    gen.add_argument("--per-class", default="60,10,20", metavar="TRAIN,VAL,TEST", help="clips per class and split")
    gen.add_argument("--seed", type=int, default=0, help="every clip follows from it")
    gen.add_argument("--workers", type=int, default=0, help="generating processes (0: one per core)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(func=_cmd_generate)

    keys = sub.add_parser("keys", help="list every config key with its default")
    keys.set_defaults(func=_cmd_keys)
    return parser


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's arguments; KEY=VALUE overrides may stand anywhere after the subcommand,
    between its options too. An unknown option exits with the nearest ones of that subcommand."""
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra and hasattr(args, "overrides"):  # KEY=VALUE words after an option belong with the others
        args.overrides += [word for word in extra if "=" in word and not word.startswith("-")]
        extra = [word for word in extra if not ("=" in word and not word.startswith("-"))]
    if extra:
        subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subcommands.choices[args.command].reject_unknown(extra)
    if hasattr(args, "argv"):
        args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        return args.func(args)
    except (ConfigError, OSError, ValueError) as error:  # OSError: missing paths, a full disk, ...
        print(f"flowaction {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if args.command in ("train", "demo", "pretrain-flow") else ""
        print(f"flowaction {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
