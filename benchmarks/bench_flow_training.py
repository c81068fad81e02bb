"""Does the trainer let the flow network learn? The trainer's flow-only path against a minimal loop.

The flow network is trained on the unsupervised losses alone (photometric + smoothness,
``loss.classification=0``) for the same number of optimiser steps

- by a **minimal loop**: the same ``FlowNet`` and losses, a constant Adam learning rate, no
  augmentation, a fixed number of random triplets per step drawn from the training clips;
- through the **project's trainer** (``flowaction.engine.loop.train_one_epoch`` with the loader, the
  augmentation, the schedule and the loss wiring of a real run), as configured, and with each
  suspected cause switched off one at a time (``--runs``).

Every run is then scored on the same test triplets (full 40 x 40 frames, triplet stride 3): end-point
error over all valid pixels and over moving pixels (valid and |GT| > 0.1 px), beside zero flow
and OpenCV DIS on exactly the same pixels. The ratio column is a run's moving-pixel EPE over the
minimal loop's at equal steps (measured in the same invocation, so machine speed does not enter).

Each finished run is written to ``OUT/<run>.json`` and skipped when the command is started again,
so runs can be split across processes (``--runs``) and a summary printed with ``--summary-only``.

Run: ``.venv/bin/python benchmarks/bench_flow_training.py --steps 300 --out benchmarks/results/flow_training``
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from flowaction.config import Config, load_config, to_dict, preset_path
from flowaction.data.clips import ClipDataset, ClipSpec
from flowaction.flow.metrics import FlowErrors
from flowaction.engine.evaluate import score_flows
from flowaction.losses import photometric_loss, smoothness_loss
from flowaction.data.source import open_data
from flowaction.engine.loaders import begin_epoch, make_loader
from flowaction.models.build import build_model
from flowaction.engine.loop import train_one_epoch

NO_JITTER = ["augment.brightness=0", "augment.contrast=0", "augment.gamma=0"]
# trainer variants: each switches off one suspected cause (or all of them)
RUNS: dict[str, list[str] | None] = {
    "minimal": None,
    # the minimal loop fed like the trainer: whole clips (all 5 triplets of 16 clips a step)
    "minimal/clip-batches": None,
    "trainer": [],
    "trainer/constant-lr": ["optim.schedule=constant"],
    "trainer/no-jitter": NO_JITTER,
    "trainer/no-noise": ["augment.noise_std=0"],
    "trainer/no-grad-clip": ["optim.grad_clip=0"],
    "trainer/full-frame": ["data.crop=40"],
    "trainer/all-off": ["optim.schedule=constant", *NO_JITTER, "augment.noise_std=0", "optim.grad_clip=0",
                        "data.crop=40"],
    # the joint model (eq. 3 with the classifier on): as the paper trains it (the whole classifier
    # gradient into the flow network), and with each remedy
    "joint/paper": ["loss.classification=1", "model.flow_grad_scale=1"],
    "joint/grad-scale-0.1": ["loss.classification=1", "model.flow_grad_scale=0.1"],
    "joint/grad-scale-0": ["loss.classification=1", "model.flow_grad_scale=0"],
    "joint/warmup-half": ["loss.classification=1", "model.flow_grad_scale=1", "optim.flow_warmup_epochs=5"],
    "joint/flow-lr-x3": ["loss.classification=1", "model.flow_grad_scale=1", "optim.flow_lr_scale=3"],
}


def base_config(args: argparse.Namespace, overrides: list[str]) -> Config:
    """The demo preset, flow losses only, one thread, exactly ``--steps`` steps."""
    return load_config(preset_path("motion"), [
        "loss.classification=0", f"threads={args.threads}", f"optim.steps={args.steps}", f"seed={args.seed}",
        f"data.synthetic_dir={args.data}", *args.set, *overrides,
    ])


def test_batches(cfg: Config, cache) -> list[dict]:
    """The test split as whole 40 x 40 clips (no crop, no augmentation), in batches of 25."""
    size = cfg.data.synthetic.size
    dataset = ClipDataset(cache, cfg.data.test_split, "val", ClipSpec(cfg.data.num_frames, 1, size, 1))
    loader = torch.utils.data.DataLoader(dataset, batch_size=25)
    return list(loader)


@torch.no_grad()
def score(model, batches: list[dict], stride: int) -> dict:
    errors = FlowErrors()
    model.eval()
    for batch in batches:
        errors.merge(score_flows(model.flows(batch["frames"]), batch, stride))
    model.train()
    return errors.result()


def train_minimal(cfg: Config, cache, args: argparse.Namespace, clip_batches: bool = False):
    """The reference: every training triplet in memory, ``--triplets`` random ones per step
    (or, with ``clip_batches``, all the triplets of ``optim.batch_size`` random clips)."""
    model = build_model(cfg, len(cache.classes))
    dataset = ClipDataset(cache, cfg.data.train_split, "val", ClipSpec(cfg.data.num_frames, 1, cfg.data.synthetic.size, 1))
    clips = torch.cat([dataset[i]["frames"][None] for i in range(len(dataset))])  # (C, 1, T, H, W)
    triplets = model.triplets(clips)  # (C * N, 1, 3, H, W), in [0, 1]
    optimizer = torch.optim.Adam(model.flow_net.parameters(), lr=cfg.optim.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    per_clip = triplets.shape[0] // clips.shape[0]
    for _ in range(args.steps):
        if clip_batches:  # cfg.optim.batch_size whole clips: their triplets are neighbours in time
            chosen = torch.randint(clips.shape[0], (cfg.optim.batch_size,), generator=generator)
            batch = triplets[(chosen[:, None] * per_clip + torch.arange(per_clip)).flatten()]
        else:
            batch = triplets[torch.randint(len(triplets), (args.triplets,), generator=generator)]
        flow = model.flow_net(model.normalise(batch))
        loss = (cfg.loss.photometric * photometric_loss(batch[:, :, 0], batch[:, :, 1], flow, cfg.loss.alpha, cfg.loss.eps)
                + cfg.loss.smoothness * smoothness_loss(flow, cfg.loss.smooth_alpha, cfg.loss.eps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def train_trainer(cfg: Config, cache):
    """The project's trainer: loader, augmentation, schedule and joint loss of a real run."""
    model = build_model(cfg, len(cache.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    loader = make_loader(cfg, cache, cfg.data.train_split, "train", shuffle=True)
    step, epoch = 0, 0
    while step < cfg.optim.steps:
        begin_epoch(loader, epoch)
        _, step = train_one_epoch(model, loader, optimizer, cfg, torch.device("cpu"), epoch, step, cfg.optim.steps,
                                  progress=False)
        epoch += 1
    return model


def run(name: str, args: argparse.Namespace) -> dict:
    overrides = RUNS[name] or []
    cfg = base_config(args, overrides)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    cache = open_data(cfg, args.data)
    started = time.perf_counter()
    if RUNS[name] is None:
        model = train_minimal(cfg, cache, args, clip_batches=name == "minimal/clip-batches")
    else:
        model = train_trainer(cfg, cache)
    seconds = time.perf_counter() - started
    result = score(model, test_batches(cfg, cache), cfg.model.triplet_stride)
    return {"run": name, "overrides": overrides, "steps": args.steps, "seconds": seconds,
            "triplets_per_step": args.triplets if name == "minimal" else cfg.optim.batch_size * 5,
            "flow": result, "config": to_dict(cfg)}


def table(results: list[dict]) -> str:
    reference = next((r for r in results if r["run"] == "minimal"), None)
    flow_only = next((r for r in results if r["run"] == "trainer"), None)
    lines = ["| run | steps | triplets/step | s | EPE all | zero | DIS | EPE moving | zero | DIS | moving / minimal "
             "| moving / trainer flow-only |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        f = r["flow"]
        ratio = f"{f['moving_epe'] / reference['flow']['moving_epe']:.2f}x" if reference else "n/a"
        joint = f"{f['moving_epe'] / flow_only['flow']['moving_epe']:.2f}x" if flow_only and r["run"].startswith("joint") else ""
        lines.append(
            f"| {r['run']} | {r['steps']} | {r['triplets_per_step']} | {r['seconds']:.0f} | {f['epe']:.3f} | "
            f"{f['zero_epe']:.3f} | {f['dis_epe']:.3f} | {f['moving_epe']:.3f} | {f['zero_moving_epe']:.3f} | "
            f"{f['dis_moving_epe']:.3f} | {ratio} | {joint} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--triplets", type=int, default=32, help="triplets per step of the minimal loop")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from: {', '.join(RUNS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for every run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flow_training"))
    parser.add_argument("--data", type=Path, default=None, help="generated-benchmark folder (default: a temp dir)")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    unknown = [r for r in args.runs.split(",") if r not in RUNS]
    if unknown:
        sys.exit(f"unknown runs {unknown}; choose from {list(RUNS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args.data = args.data or Path(tmp) / "data"
        for name in [] if args.summary_only else args.runs.split(","):
            path = args.out / f"{name.replace('/', '__')}-{args.steps}.json"
            if path.is_file():
                continue
            result = run(name, args)
            path.write_text(json.dumps(result, indent=1))
            print(f"{name}: moving EPE {result['flow']['moving_epe']:.3f} in {result['seconds']:.0f} s", flush=True)
    results = [json.loads(p.read_text()) for p in sorted(args.out.glob(f"*-{args.steps}.json"))]
    results.sort(key=lambda r: list(RUNS).index(r["run"]) if r["run"] in RUNS else len(RUNS))
    text = table(results)
    (args.out / f"summary-{args.steps}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
