"""The five-minute demo: generate the benchmark, train the joint model, test, draw flows."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from flowaction.commands.evaluate import write_eval_report
from flowaction.commands.rundir import claim_run_dir, run_lock
from flowaction.config import Config, load_config, no_flow_start, preset_path
from flowaction.data.cache import ClipCache, atomic_write_json
from flowaction.data.source import open_data
from flowaction.engine.evaluate import evaluate_checkpoint
from flowaction.engine.fit import fit
from flowaction.engine.loaders import make_loader
from flowaction.engine.step import model_flows
from flowaction.flow.classical import classical_flow
from flowaction.flow.metrics import describe_flow_errors
from flowaction.flow.viz import flow_panel
from flowaction.models.build import load_model_checkpoint
from flowaction.models.weights import SHIPPED_FLOW
from flowaction.warp import backward_warp

FLOW_NAMES = {"learned": "learned flow", "dis": "DIS (model input)", "farneback": "Farneback (model input)"}


@torch.no_grad()
def write_flow_pictures(checkpoint: Path, cache: ClipCache, split: str, out_dir: Path, count: int = 8) -> list[str]:
    """Panels (frame | the model's flow | DIS | ground truth | warp error) for one clip of each of
    the first ``count`` classes (all eight of the demo: the slow rotations and expansions too); the
    model's flow is the learned one, or the OpenCV flow a ``dis`` / ``farneback``
    model classifies. A model that sees frames only has no flow to draw: returns ``[]``."""
    loaded = load_model_checkpoint(checkpoint)
    model, cfg = loaded.model, loaded.cfg
    dataset = make_loader(cfg, cache, split, "val").dataset
    chosen, seen = [], set()
    for item in range(len(dataset)):
        label = cache.videos[dataset.videos[item]]["label"]
        if label not in seen:
            seen.add(label)
            chosen.append(item)
        if len(chosen) == count:
            break
    rows, labels = [], []
    for item in chosen:
        sample = dataset[item]
        frames = sample["frames"].unsqueeze(0)
        seen_flow = model_flows(model, frames)
        if seen_flow is None:
            return []
        source, flows = seen_flow[0], seen_flow[1][0]  # (2, N, H, W)
        j = flows.shape[1] // 2
        k = j * model.triplet_stride
        prev, cur = frames[0, 0, k], frames[0, 0, k + 1]
        flow = flows[:, j]
        warped = backward_warp(cur[None, None], flow[None])[0, 0]
        row = {"frame": prev.numpy(), FLOW_NAMES[source]: flow.numpy()}
        if source != "dis":
            row["DIS"] = classical_flow(prev.numpy(), cur.numpy(), "dis")
        row["ground truth"] = sample["flow"][k].numpy()
        row["warp error"] = (warped - prev).abs().numpy()
        rows.append(row)
        labels.append(cache.classes[sample["label"]])
    path = out_dir / "flows.png"
    flow_panel(path, rows, row_labels=labels, cmaps={"warp error": "magma"}, title=f"{split} clips, middle flow")
    return [str(path)]


def run_demo(
    out: str | Path,
    preset: str = "actions",
    overrides: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    log=print,
    overwrite: bool = False,
    delete_old: bool = False,
) -> dict:
    """Generate -> train -> test -> ``OUT/metrics.json`` and pictures. Returns the metrics.

    An ``out`` that holds a run is continued with ``resume``, started again with ``overwrite``
    (see :func:`flowaction.commands.rundir.claim_run_dir`) and refused otherwise."""
    started = time.time()
    out = Path(out)
    overrides = list(overrides or [])
    fresh = no_flow_start(overrides, "learned")
    if len(fresh) > len(overrides):  # the preset starts its flow network from the shipped one; this model has none
        overrides = fresh
        log(f"{next(o for o in overrides if o.strip().startswith('model.input'))}: no flow network, so the "
            "preset's pre-trained one is not used")
    cfg = load_config(preset_path(preset), overrides)
    saved = out / "config.yaml"
    if resume and not overwrite and saved.is_file() and not cfg.data.cache:
        kind = load_config(saved, []).data.synthetic.kind
        if kind != cfg.data.synthetic.kind:  # e.g. a motion demo left in runs/demo before the default changed
            raise ValueError(f"{out} holds a demo run on the {kind} benchmark, not {cfg.data.synthetic.kind}: "
                             f"continue it with --preset {kind}, or start again with --overwrite (its files are "
                             f"moved aside, not deleted)")
    claim_run_dir(out, resume, overwrite, delete_old, log)
    with run_lock(out):
        return _run_demo_locked(out, cfg, preset, resume, progress, log, started)


def _run_demo_locked(out: Path, cfg: Config, preset: str, resume: bool, progress: bool, log, started: float) -> dict:
    cache = open_data(cfg, out, progress=progress)
    generated = time.time()
    kind = "" if cfg.data.cache else f"{cfg.data.synthetic.kind} "
    log(f"data: {len(cache.videos)} clips of {len(cache.classes)} {kind}classes in {cache.root}")
    if cfg.model.flow_init in SHIPPED_FLOW:
        trained_on = {"default": "generated motion benchmark", "actions": "action benchmark's photographs",
                      "scenes": "flow scenes of real photographs"}[cfg.model.flow_init]
        log(f"flow network: starts from the pre-trained network shipped with flowaction (self-supervised on the "
            f"{trained_on}); model.flow_init=none trains it from scratch as in the paper")
    elif cfg.model.flow_init != "none":
        log(f"flow network: starts from {cfg.model.flow_init}")
    summary = fit(cfg, cache, out, resume=resume, progress=progress, log=log)
    trained = time.time()
    split = cfg.data.test_split
    report = evaluate_checkpoint(out / "best.pt", cache, split, progress=progress)
    write_eval_report(report, out)
    pictures = write_flow_pictures(out / "best.pt", cache, split, out)
    if pictures:
        flow_pictures = f"{pictures[0]}: the flow the model classified ({cfg.model.input})"
    else:
        flow_pictures = ("none: model.input=truth classifies the ground-truth flow (the benchmark's own)"
                         if cfg.model.input == "truth" else
                         f"none: model.input={cfg.model.input} classifies frames and computes no flow")
    log(f"flow pictures: {flow_pictures}")
    metrics = {
        "test_accuracy": report["clip_accuracy"],
        "test_video_accuracy": report["video_accuracy"],
        "test_mean_class_accuracy": report["mean_class_accuracy"],
        "top5_video_accuracy": report["top5_video_accuracy"],
        **{key: report[key] for key in report if key.endswith("_epe") or key.startswith("flow_")},
        "chance_accuracy": 1.0 / len(cache.classes),
        "model_input": cfg.model.input,
        "flow_pictures": flow_pictures,
        "flow_init": cfg.model.flow_init,
        "flow_grad_scale": cfg.model.flow_grad_scale,
        "amp": summary["amp"],  # the precision training ran in (optim.amp=auto resolved)
        "train_steps": summary["steps"],
        "num_classes": len(cache.classes),
        "test_clips": report["num_clips"],
        "generate_seconds": generated - started,
        "train_seconds": trained - generated,
        "wall_seconds": time.time() - started,
        "per_class": dict(zip(cache.classes, report["per_class"])),
        "pictures": pictures + [str(out / "curves.png"), str(out / "confusion.png")],
    }
    atomic_write_json(out / "metrics.json", metrics)
    flow_line = f"{describe_flow_errors(report['flow'])} | " if report["flow"] else ""
    log(
        f"test accuracy {metrics['test_accuracy']:.3f} (chance {metrics['chance_accuracy']:.3f}) | "
        f"{flow_line}{metrics['wall_seconds']:.0f} s | {out}/metrics.json"
    )
    return metrics
