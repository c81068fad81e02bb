"""How much better could the demo do with perfect flow? Two measurements on the demo's benchmark.

1. Flow error per class on the test split (moving pixels: valid and |GT| > 0.1 px): the learned flow
   (the shipped flow network, the one in ``--flow-weights`` or in ``--checkpoint``), OpenCV DIS, and
   the mean ground-truth speed on the same pixels; and the learned flow's gain, its component along
   the truth relative to the truth (below 1: the motion is underestimated), with the number of clips
   whose gain is positive (their learned flow points the true way on the whole); and the photometric
   penalty of eq. 1 (the configured data term of the warp error) on the same pixels at the learned, the true and
   zero flow: if the truth scores better than the learned flow, the loss is not what holds the
   network back. Classes that move by a fraction of a pixel per frame (rotation,
   expansion) are where an error of 0.2 px hides the motion.
2. An oracle: the demo's 3D ResNet trained on the ground-truth flow of the triplets' pairs (the flows
   a perfect flow network would give), with the demo's data, schedule and steps; test accuracy
   overall and per class. The gap between it and the demo is what better flow can still buy.
   With ``--pool 1,2,4`` it is trained again on the ground truth average-pooled to 1/2 and 1/4 of the
   resolution and upsampled back (bilinear): a flow that is right on average but blurs motion
   boundaries, as a network that predicts at half resolution does. The accuracy lost there is what
   the flow's spatial detail is worth, however small the pooled truth's EPE; ``--seeds N`` repeats
   each oracle with seeds 0 to N-1.

Run (about five minutes on two CPU cores)::

    .venv/bin/python benchmarks/bench_oracle_flow.py --out benchmarks/results/oracle_flow

``--skip-oracle`` gives only the per-class flow error; ``--input-scale S`` runs the flow network on
the frames enlarged S times (``model.flow_input_scale``).

``--respawn RUN`` instead scores a demo run's ``best.pt`` per class on the test clips with and without
a respawn (an object jumping to the other end of its radius range) in a pair its flows relate.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flowaction.config import load_config, preset_path
from flowaction.engine.evaluate import gt_flow_for_model, run_evaluation, video_scores
from flowaction.flow.classical import stacked_classical_flow
from flowaction.flow.metrics import FlowErrors
from flowaction.triplets import flow_pair_frames, num_triplets
from flowaction.loss_variants import data_penalty
from flowaction.warp import backward_warp, in_frame_mask
from flowaction.models.weights import load_flow_weights
from flowaction.data.source import open_data
from flowaction.engine.loaders import begin_epoch, make_loader
from flowaction.models.build import build_model
from flowaction.engine.optim import build_optimizer
from flowaction.engine.loop import train_one_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this script
from flow_weights import flow_shape  # noqa: E402


def pooled_flow(flow: torch.Tensor, factor: int) -> torch.Tensor:
    """``flow (..., 2, H, W)`` average-pooled by ``factor`` and upsampled back to ``H x W`` (bilinear;
    pixel units are kept, since the size is the same): its mean motion survives, its detail does not."""
    if factor == 1:
        return flow
    shape = flow.shape
    flat = flow.reshape(-1, 2, *shape[-2:]).float()
    small = torch.nn.functional.avg_pool2d(flat, factor, ceil_mode=True)
    return torch.nn.functional.interpolate(small, size=shape[-2:], mode="bilinear",
                                           align_corners=False).reshape(shape).to(flow.dtype)


class _WithTrueFlow:
    """A loader whose batches carry the ground-truth pair flows (pooled by ``pool``) as the
    precomputed flow input."""

    def __init__(self, loader, pool: int = 1) -> None:
        self.loader = loader
        self.dataset = loader.dataset
        self.pool = pool

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield {**batch, "classical": pooled_flow(batch["flow"], self.pool)}


@torch.no_grad()
def flow_error_per_class(cfg, cache, checkpoint: str | None, flow_weights: str = "default",
                         input_scale: int | None = None) -> dict[str, dict[str, float]]:
    # the network the file holds (a pyramid network, say) at the input scale it was trained at,
    # or at ``input_scale``
    for key, value in flow_shape(checkpoint or flow_weights).items():
        setattr(cfg.model, key, value)
    if input_scale is not None:
        cfg.model.flow_input_scale = input_scale
    model = build_model(cfg, len(cache.classes))
    if checkpoint:
        from flowaction.checkpoint import load_checkpoint, load_weights

        load_weights(model, load_checkpoint(checkpoint)["model"], checkpoint)
    else:
        load_flow_weights(model.flow_net, flow_weights)
    model.eval()
    # class -> (learned error, DIS error, true speed, pixels, learned . truth, |truth|^2, photometric
    # penalty at the learned flow, at the true flow, at zero flow, in-frame pixels), summed
    sums: dict[str, np.ndarray] = {}
    stride = cfg.model.triplet_stride
    for batch in make_loader(cfg, cache, cfg.data.test_split, "val"):
        frames = batch["frames"]
        learned = model.flows(frames)
        count = num_triplets(frames.shape[2], stride)
        dis = stacked_classical_flow(frames, stride, "dis")
        truth, valid = gt_flow_for_model(batch["flow"], batch["valid"], count, stride)
        speed = truth.norm(dim=1)
        moving = valid & (speed > 0.1)
        # the data term of the flow loss (eq. 1) per pixel at each flow: does the loss itself prefer
        # the truth on these pixels, or is the network failing to reach what the loss prefers?
        prev, cur = flow_pair_frames(frames, count, stride)
        term = cfg.loss
        penalties = {}
        inside = moving.flatten(0, 1)
        for name, flow in (("learned", learned), ("truth", truth), ("zero", torch.zeros_like(truth))):
            flat = flow.transpose(1, 2).flatten(0, 1)
            penalty = data_penalty(backward_warp(cur, flat), prev, term.data_term, term.alpha, term.eps)
            penalties[name] = penalty[:, 0].view_as(moving)
            inside = inside & (in_frame_mask(flat)[:, 0] > 0)
        inside = inside.view_as(moving)
        for i, label in enumerate(batch["label"].tolist()):
            where, seen = moving[i], inside[i]
            along = float((learned[i] * truth[i]).sum(dim=0)[where].sum())
            sums.setdefault(cache.classes[label], np.zeros(12))[:] += [
                float((learned[i] - truth[i]).norm(dim=0)[where].sum()),
                float((dis[i] - truth[i]).norm(dim=0)[where].sum()),
                float(speed[i][where].sum()),
                float(where.sum()),
                along,
                float((truth[i] ** 2).sum(dim=0)[where].sum()),
                *(float(penalties[name][i][seen].sum()) for name in ("learned", "truth", "zero")),
                float(seen.sum()),
                # does this clip's learned flow point the way the truth does, on the whole?
                float(along > 0), float(bool(where.any())),
            ]
    table = {}
    for name, row in sums.items():
        learned_sum, dis_sum, speed_sum, pixels, along, energy, at_learned, at_truth, at_zero, seen, agree, clips = row
        n, m = max(pixels, 1.0), max(seen, 1.0)
        # gain: the learned flow's component along the truth, relative to the truth (1 = the right
        # length on average, 0.5 = half of the motion)
        table[name] = {"learned_epe": learned_sum / n, "dis_epe": dis_sum / n, "gt_speed": speed_sum / n,
                       "learned_gain": along / max(energy, 1e-12), "photometric_learned": at_learned / m,
                       "photometric_truth": at_truth / m, "photometric_zero": at_zero / m,
                       "clips_gain_positive": int(agree), "clips_moving": int(clips)}
    return table


@torch.no_grad()
def respawn_accuracy(run: Path) -> dict[str, dict[str, int]]:
    """Test accuracy of a generated-benchmark run's ``best.pt``, per class, split by whether an
    object respawns (jumps to the other end of its radius range) in a pair the model's flows relate.

    At a respawn the frames show a jump that any flow method sees, while the ground truth keeps the
    physical motion: the oracle's flow hides what the frames show there.
    """
    from flowaction.checkpoint import load_checkpoint, load_weights
    from flowaction.data.synthetic import clip_rng, render_clip
    from flowaction.data.source import synthetic_spec

    cfg = load_config(run / "config.yaml", [])
    if cfg.data.cache or cfg.data.num_frames != cfg.data.synthetic.num_frames:
        raise SystemExit(f"{run} must be a run on the generated benchmark whose clips are one clip long")
    cache = open_data(cfg, run, progress=False)
    model = build_model(cfg, len(cache.classes))
    load_weights(model, load_checkpoint(run / "best.pt")["model"], run / "best.pt")
    model.eval()
    spec = synthetic_spec(cfg)
    counts: dict[str, dict[str, int]] = {}
    for batch in make_loader(cfg, cache, cfg.data.test_split, "val"):
        frames = batch["frames"]
        predicted = model(frames)[0].argmax(1).tolist()
        pairs = np.arange(num_triplets(frames.shape[2], cfg.model.triplet_stride)) * cfg.model.triplet_stride
        for video, label, guess in zip(batch["video"].tolist(), batch["label"].tolist(), predicted):
            split, index = cache.videos[video]["id"].split("/")
            clip = render_clip(label, clip_rng(cfg.data.synthetic.seed, split, int(index)), spec)
            kind = "respawn" if clip.respawn[pairs].any() else "none"
            row = counts.setdefault(cache.classes[label], {"respawn": 0, "respawn_correct": 0, "none": 0,
                                                           "none_correct": 0})
            row[kind] += 1
            row[f"{kind}_correct"] += int(guess == label)
    return counts


def oracle_accuracy(cfg, cache, threads: int, pool: int = 1) -> dict:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(threads)
    model = build_model(cfg, len(cache.classes))
    optimizer = build_optimizer(cfg, model)
    loader = _WithTrueFlow(make_loader(cfg, cache, cfg.data.train_split, "train", shuffle=True), pool)
    total = cfg.optim.epochs * len(loader)
    started, step = time.time(), 0
    for epoch in range(cfg.optim.epochs):
        begin_epoch(loader.loader, epoch)
        _, step = train_one_epoch(model, loader, optimizer, cfg, torch.device("cpu"), epoch, step, total,
                                  progress=False)
    seconds = time.time() - started
    test = _WithTrueFlow(make_loader(cfg, cache, cfg.data.test_split, "val"), pool)
    result = run_evaluation(model, test, torch.device("cpu"), cfg.loss, progress=False, classical=())
    per_class = video_scores(result, len(cache.classes))["per_class"]
    return {"test_accuracy": result.clip_accuracy, "steps": step, "train_seconds": seconds, "pool": pool,
            "seed": cfg.seed, "per_class": dict(zip(cache.classes, per_class))}


@torch.no_grad()
def pooled_truth_epe(cfg, cache, factor: int) -> float:
    """EPE (px) of the pooled ground truth against the truth on the test split's moving valid pixels."""
    errors = FlowErrors()
    stride = cfg.model.triplet_stride
    for batch in make_loader(cfg, cache, cfg.data.test_split, "val"):
        count = num_triplets(batch["frames"].shape[2], stride)
        truth, valid = gt_flow_for_model(batch["flow"], batch["valid"], count, stride)
        truth = truth.transpose(1, 2)  # (B, N, 2, H, W): the vector axis third from last, as FlowErrors takes it
        errors.add(truth, valid, {"learned": pooled_flow(truth, factor)})
    return errors.result()["moving_epe"] or 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="motion", help="the demo preset whose data and schedule are used (motion or actions)")
    parser.add_argument("--checkpoint", default=None, help="a demo run's best.pt (default: the shipped flow network)")
    parser.add_argument("--flow-weights", default="default",
                        help="a flownet.pt from pretrain-flow to score instead of the shipped one (without --checkpoint)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--skip-oracle", action="store_true", help="only the per-class flow error (seconds)")
    parser.add_argument("--input-scale", type=int, default=None, help="run the flow network on the frames enlarged "
                        "this many times (model.flow_input_scale; default: the scale its file was trained at)")
    parser.add_argument("--pool", default="1", help="comma-separated factors: an oracle on the truth pooled to "
                                                     "1/F and upsampled back, for each F (1: the truth itself)")
    parser.add_argument("--seeds", type=int, default=1, help="oracle runs per factor, seeds 0..N-1")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/oracle_flow"), help="output folder")
    parser.add_argument("--data", type=Path, default=Path("runs/bench-oracle-flow/data"),
                        help="where the generated benchmark goes (made once, then reused)")
    parser.add_argument("--respawn", type=Path, default=None, metavar="RUN",
                        help="only: a demo run's test accuracy per class, clips with and without a respawn "
                             "in a scored pair (uses RUN/config.yaml, RUN/best.pt and RUN's data)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.respawn:
        torch.set_num_threads(args.threads)
        counts = respawn_accuracy(args.respawn)
        print(f"test accuracy of {args.respawn / 'best.pt'}: clips with / without a respawn in a scored pair")
        for name, row in counts.items():
            cells = [f"{row[k + '_correct']}/{row[k]}" if row[k] else "-" for k in ("respawn", "none")]
            print(f"{name:12s} {cells[0]:>8s} {cells[1]:>8s}")
        (args.out / "respawn.json").write_text(json.dumps({"run": str(args.respawn), "per_class": counts}, indent=1))
        return 0
    cfg = load_config(preset_path(args.preset), [f"data.synthetic_dir={args.data}"])
    cache = open_data(cfg, args.data.parent, progress=False)
    if args.input_scale is not None and args.input_scale < 1:
        raise SystemExit(f"--input-scale must be >= 1, got {args.input_scale}")
    errors = flow_error_per_class(cfg, cache, args.checkpoint, args.flow_weights, args.input_scale)
    source = args.checkpoint or ("shipped flow network" if args.flow_weights == "default" else args.flow_weights)
    print(f"moving-pixel EPE per class, test split ({source})")
    print(f"{'class':12s} {'learned':>8s} {'DIS':>8s} {'|GT|':>8s} {'learned/|GT|':>13s} {'gain':>6s} {'gain>0':>7s}"
          f"   photometric x100 at: {'learned':>8s} {'truth':>8s} {'zero':>8s}")
    for name, row in errors.items():
        agree = f"{row['clips_gain_positive']}/{row['clips_moving']}"
        print(f"{name:12s} {row['learned_epe']:8.3f} {row['dis_epe']:8.3f} {row['gt_speed']:8.3f} "
              f"{row['learned_epe'] / row['gt_speed']:13.2f} {row['learned_gain']:6.2f} {agree:>7s}"
              f"   {'':21s}{100 * row['photometric_learned']:8.3f} {100 * row['photometric_truth']:8.3f} "
              f"{100 * row['photometric_zero']:8.3f}")
    result = {"preset": args.preset, "flow_source": source, "input_scale": cfg.model.flow_input_scale,
              "flow_error_per_class": errors}
    if not args.skip_oracle:
        runs, epes = [], {}
        for factor in (int(f) for f in args.pool.split(",")):
            epe = epes[factor] = pooled_truth_epe(cfg, cache, factor)
            for seed in range(args.seeds):
                oracle_cfg = load_config(preset_path(args.preset), [
                    f"data.synthetic_dir={args.data}", "model.input=dis", "model.flow_init=none", f"seed={seed}"])
                oracle = oracle_accuracy(oracle_cfg, cache, args.threads, factor)
                oracle["pooled_truth_moving_epe"] = epe
                runs.append(oracle)
                print(f"\noracle (the demo's ResNet on ground-truth flow pooled by {factor}, moving EPE {epe:.3f} px; "
                      f"seed {seed}, {oracle['steps']} steps, {oracle['train_seconds']:.0f} s): "
                      f"test accuracy {oracle['test_accuracy']:.3f}")
                print("  " + ", ".join(f"{name} {value:.2f}" for name, value in oracle["per_class"].items()))
        result["oracle_runs"] = runs
        print(f"\n{'pool':>4s} {'moving EPE (px)':>16s} {'test accuracy, per seed':>24s} {'median':>7s}")
        for factor, epe in sorted(epes.items()):
            accs = [r["test_accuracy"] for r in runs if r["pool"] == factor]
            print(f"{factor:4d} {epe:16.3f} {' / '.join(f'{a:.3f}' for a in accs):>24s} {float(np.median(accs)):7.3f}")
    (args.out / "oracle_flow.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
