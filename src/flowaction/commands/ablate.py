"""Ablations and the sample-efficiency sweep: many short runs, resumable, summarised in Markdown.

Every finished run writes ``RUN/result.json``; started again, a study skips those runs, so it can
be finished across sessions (or on another machine) and the summary regenerated at any time.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np

from flowaction.config import Config, from_dict, load_config, nearest, no_flow_start, to_dict
from flowaction.data.cache import atomic_write_json
from flowaction.data.poses import TIME_REVERSED_PAIRS
from flowaction.data.source import open_data
from flowaction.engine.evaluate import evaluate_checkpoint
from flowaction.engine.fit import fit
from flowaction.models.build import build_model, count_parameters, flow_network
from flowaction.models.weights import load_flow_weights
from flowaction.plots import save_figure

# variant name -> config overrides (the two-stage split is filled in from the epoch count)
VARIANTS: dict[str, list[str]] = {
    # the joint model as fixed here (a tenth of the classifier's gradient into the flow network),
    # from the base config's start and from the shipped self-supervised flow network; and as the
    # paper trains it: from scratch, the whole classifier gradient
    "learned": [],
    "learned-pretrained": ["model.flow_init=default", "model.flow_pyramid=false"],
    "paper": ["model.flow_grad_scale=1", "model.flow_init=none"],
    "learned+frames": ["model.input=learned+frames"],
    "frames": ["model.input=frames"],
    # controls for a generated benchmark: one repeated frame (posture without motion) and the oracle
    # on the ground-truth flow (what a perfect flow network would give the same ResNet)
    "one-frame": ["model.input=one-frame"],
    "truth": ["model.input=truth"],
    "dis": ["model.input=dis"],
    "farneback": ["model.input=farneback"],
    # no flow loss: the classifier alone shapes the flow; random output layers so it can leave zero flow
    "no-flow-loss": ["loss.photometric=0", "loss.smoothness=0", "model.flow_output_init=random"],
    "two-stage": ["optim.flow_pretrain_epochs={half}"],
    # remedies that keep the flow network a flow learner inside the joint loss
    "grad-scale-0": ["model.flow_grad_scale=0"],
    "flow-warmup": ["optim.flow_warmup_epochs={half}"],
    "multiscale": ["loss.multiscale=true"],
    "edge-aware": ["loss.edge_aware=10"],
    "occlusion": ["loss.occlusion=true"],
    "census": ["loss.data_term=census"],
    "ssim": ["loss.data_term=ssim"],
    # sub-pixel flow (rotation and expansion move a fraction of a pixel per frame), each from the
    # shipped flow network like learned-pretrained: from scratch the flow barely leaves zero flow
    # in a study run's few hundred steps, so a flow switch would show nothing there
    "smooth2": ["model.flow_init=default", "model.flow_pyramid=false", "loss.smooth_order=2"],
    "long-pair": ["model.flow_init=default", "model.flow_pyramid=false", "loss.long_pair=1"],
    "refine": ["model.flow_init=default", "model.flow_pyramid=false", "model.flow_refine=true"],
    "input-scale-2": ["model.flow_input_scale=2"],  # the base's flow network on frames enlarged twice
    # the paper's open questions: too few stacked flows (clip length T, triplet stride s)? loss weighting?
    "T8": ["data.num_frames=8"],
    "T32": ["data.num_frames=32"],
    "s1": ["model.triplet_stride=1"],
    "a2=1": ["loss.photometric=1"],
    "a2=10": ["loss.photometric=10"],
    "a2=1000": ["loss.photometric=1000"],
    "a3=0.1": ["loss.smoothness=0.1"],
    "a3=10": ["loss.smoothness=10"],
}
SWEEP_RUNS = ("learned", "frames", "dis")


def variant_config(base: Config, variant: str, seed: int, extra: list[str] | None = None) -> Config:
    """``base`` with a variant's overrides, a seed and any ``extra`` overrides."""
    if variant not in VARIANTS:
        near = nearest(variant, list(VARIANTS))
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise ValueError(f"unknown variant {variant!r}; {hint}(variants: {', '.join(VARIANTS)})")
    half = max(1, base.optim.epochs // 2)
    overrides = [o.format(half=half) for o in VARIANTS[variant]] + [f"seed={seed}"] + list(extra or [])
    return from_dict(to_dict(base), no_flow_start(overrides, base.model.input))


def run_one(cfg: Config, cache, run_dir: Path, keep_checkpoints: bool = False, progress: bool = False) -> dict:
    """Train and test one configuration unless ``run_dir/result.json`` exists; return the result."""
    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    summary = fit(cfg, cache, run_dir, resume=True, progress=progress, log=lambda *_: None)
    report = evaluate_checkpoint(run_dir / "best.pt", cache, cfg.data.test_split, progress=progress)
    result = {
        "clip_accuracy": report["clip_accuracy"],
        "video_accuracy": report["video_accuracy"],
        **{key: report[key] for key in FLOW_KEYS},
        "photometric_l1": report.get("photometric_l1"),
        "train_seconds": summary["wall_seconds"],
        "steps": summary["steps"],
        "parameters": count_parameters(build_model(cfg, len(cache.classes))),
        "train_clips": report.get("train_clips"),
        "classes": list(cache.classes),
        "per_class": report["per_class"],
        "confusion": report["confusion"],
        "config": to_dict(cfg),
    }
    if not keep_checkpoints:
        for name in ("last.pt", "best.pt"):
            (run_dir / name).unlink(missing_ok=True)
    atomic_write_json(result_path, result)
    return result


FLOW_KEYS = ("flow_epe", "flow_moving_epe", "zero_flow_epe", "zero_flow_moving_epe", "dis_epe", "dis_moving_epe")


def _stats(values: list[float | None]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _fmt(stat, scale: float = 1.0, digits: int = 1) -> str:
    if stat is None:
        return "n/a"
    return f"{stat[0] * scale:.{digits}f} ± {stat[1] * scale:.{digits}f}"


def _seeds_cell(values: list[float]) -> str:
    """A sweep cell in %: mean ± std and how many seeds, or the one seed's figure as such."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f} (1 seed)"
    return "n/a" if not values else f"{_fmt(_stats(values), 100)} ({len(values)} seeds)"


def pair_accuracy(confusion: list[list[int]], classes: list[str], pair: tuple[str, str]) -> float | None:
    """Of the test videos of a pair's two classes that were given one of those two classes, the
    share given the right one: 0.5 is chance between them (None if no such video)."""
    a, b = classes.index(pair[0]), classes.index(pair[1])
    within = pair_count(confusion, classes, pair)
    return (confusion[a][a] + confusion[b][b]) / within if within else None


def pair_count(confusion: list[list[int]], classes: list[str], pair: tuple[str, str]) -> int:
    """How many test videos of a pair's two classes were given one of those two classes."""
    a, b = classes.index(pair[0]), classes.index(pair[1])
    return confusion[a][a] + confusion[b][b] + confusion[a][b] + confusion[b][a]


def _data_name(runs: list[dict]) -> str:
    data = runs[0]["config"]["data"]
    return "a prepared cache" if data.get("cache") else f"the generated {data['synthetic'].get('kind', 'motion')} benchmark"


def _class_tables(results: dict[str, list[dict]]) -> list[str]:
    """Per-class accuracy and, where the classes hold time-reversed pairs, accuracy within each pair."""
    scored = {v: [r for r in runs if r.get("confusion")] for v, runs in results.items()}
    scored = {v: runs for v, runs in scored.items() if runs}
    if not scored:
        return []
    classes = next(iter(scored.values()))[0]["classes"]
    lines = ["", "## Per class (video accuracy, %, mean over seeds)", "",
             "| variant | " + " | ".join(classes) + " |", "| --- |" + " --- |" * len(classes)]
    for variant, runs in scored.items():
        cells = [_fmt(_stats([r["per_class"][i] for r in runs]), 100, 0) for i in range(len(classes))]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    pairs = [pair for pair in TIME_REVERSED_PAIRS if set(pair) <= set(classes)]
    if pairs:
        lines += ["", "## Within each time-reversed pair (%, chance 50)", "",
                  "Of a pair's test videos given one of its two classes, the share given the right one (in",
                  "brackets: how many such videos, over all seeds). Every single frame of one class has the",
                  "distribution of the other's: only motion separates them.",
                  "", "| variant | " + " | ".join(" / ".join(p) for p in pairs) + " |", "| --- |" + " --- |" * len(pairs)]
        for variant, runs in scored.items():
            cells = [f"{_fmt(_stats([pair_accuracy(r['confusion'], r['classes'], p) for r in runs]), 100)} "
                     f"({sum(pair_count(r['confusion'], r['classes'], p) for r in runs)})" for p in pairs]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def summarise(results: dict[str, list[dict]], sweep: dict[str, dict[int, list[dict]]], out: Path, command: str) -> None:
    """Write ``results.md``, ``ablation.png`` and (if any) ``sample_efficiency.png``."""
    first = [runs for runs in results.values() if runs] + [r for by in sweep.values() for r in by.values() if r]
    lines = [
        f"# Ablation on {_data_name(first[0]) if first else 'the generated benchmark'}",
        "",
        f"Regenerate with: `{command}`",
        "",
        "Mean ± standard deviation over seeds (test split). Flow EPE (px) is against the ground truth",
        "over all valid pixels and over moving pixels (valid and |GT| > 0.1 px), with zero flow and",
        "OpenCV DIS (medium) on exactly the same pixels; photometric L1 is the mean absolute",
        "intensity error (0-1 scale) of warping with the flow the classifier used, in-frame pixels.",
        "",
        "| variant | seeds | clip acc. (%) | video acc. (%) | EPE all | zero | DIS | EPE moving | zero | DIS "
        "| photometric L1 (x100) | train s | parameters |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, runs in results.items():
        if not runs:
            continue
        lines.append(
            f"| {variant} | {len(runs)} | {_fmt(_stats([r['clip_accuracy'] for r in runs]), 100)} | "
            f"{_fmt(_stats([r['video_accuracy'] for r in runs]), 100)} | "
            + "".join(f"{_fmt(_stats([r.get(key) for r in runs]), 1, 3)} | " for key in FLOW_KEYS[::2] + FLOW_KEYS[1::2])
            + f"{_fmt(_stats([r['photometric_l1'] for r in runs]), 100, 2)} | "
            f"{_fmt(_stats([r['train_seconds'] for r in runs]), 1, 0)} | {runs[0]['parameters']:,} |"
        )
    lines += _class_tables(results)
    if sweep:
        lines += ["", "## Sample efficiency (test clip accuracy, %, by training clips per class, equal steps)", ""]
        sizes = sorted({n for by_size in sweep.values() for n in by_size})
        lines.append("| variant | " + " | ".join(str(n) for n in sizes) + " |")
        lines.append("| --- |" + " --- |" * len(sizes))
        for variant, by_size in sweep.items():
            cells = [_seeds_cell([r["clip_accuracy"] for r in by_size.get(n, [])]) for n in sizes]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    tmp = out / ".results.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out / "results.md")
    _plot(results, sweep, out)


def _plot(results, sweep, out: Path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v for v, runs in results.items() if runs]
    if names:
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(names) + 4), 3.8))
        acc = [_stats([r["clip_accuracy"] for r in results[v]]) for v in names]
        axes[0].bar(names, [a[0] * 100 for a in acc], yerr=[a[1] * 100 for a in acc], capsize=3, color="tab:blue")
        axes[0].set_ylabel("test clip accuracy (%)")
        # moving pixels: where zero flow is not trivially right; learned-flow bars only for models with a flow net
        epe = [_stats([r.get("flow_moving_epe") for r in results[v]]) for v in names]
        axes[1].bar(names, [e[0] if e else 0 for e in epe], yerr=[e[1] if e else 0 for e in epe], capsize=3, color="tab:orange")
        drawn = False
        for key, style, label in (("zero_flow_moving_epe", "--", "zero flow"), ("dis_moving_epe", ":", "DIS")):
            reference = _stats([r.get(key) for v in names for r in results[v]])
            if reference:
                axes[1].axhline(reference[0], color="k", linestyle=style, label=label)
                drawn = True
        if drawn:  # no reference lines when no variant scores flow (e.g. frames alone)
            axes[1].legend()
        axes[1].set_ylabel("flow EPE on moving pixels (px)")
        values = [e[0] for e in epe if e and e[0] > 0]
        if values and max(values) > 10 * min(values):  # e.g. no-flow-loss's tens of pixels beside 0.2 px
            axes[1].set_yscale("log")
        for ax in axes:
            ax.tick_params(axis="x", rotation=60)
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        save_figure(fig, out / "ablation.png", dpi=110)
        plt.close(fig)
    if sweep:
        fig, ax = plt.subplots(figsize=(5, 3.8))
        for variant, by_size in sweep.items():
            sizes = sorted(n for n in by_size if by_size[n])
            stats = [_stats([r["clip_accuracy"] for r in by_size[n]]) for n in sizes]
            ax.errorbar(sizes, [s[0] * 100 for s in stats], yerr=[s[1] * 100 for s in stats], marker="o", capsize=3, label=variant)
        ax.set_xscale("log")
        ax.set_xlabel("training clips per class")
        ax.set_ylabel("test clip accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save_figure(fig, out / "sample_efficiency.png", dpi=110)
        plt.close(fig)


def run_ablation(
    config: str | Path | None,
    variants: list[str],
    seeds: int,
    out: str | Path,
    overrides: list[str] | None = None,
    sweep_sizes: list[int] | None = None,
    sweep_variants: list[str] | None = None,
    keep_checkpoints: bool = False,
    command: str = "",
    log=print,
    summary_only: bool = False,
    progress: bool = True,
) -> Path:
    """Run every (variant, seed), then the sweep, then write the summary. Returns results.md.

    With ``summary_only`` nothing is trained: the summary covers the runs already finished.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(config, list(overrides or []) + [f"data.synthetic_dir={out / 'data'}"])
    for variant in variants + list(sweep_variants or []):
        # fail on a typo, or on clips longer than the generated videos, before any data or run is made
        span = variant_config(base, variant, 0).data
        needed = (span.num_frames - 1) * span.frame_step + 1
        if not base.data.cache and needed > base.data.synthetic.num_frames:
            raise ValueError(f"variant {variant}: clips of {needed} frames, but the generated videos have "
                             f"{base.data.synthetic.num_frames} (their last frame would be repeated); set "
                             f"data.synthetic.num_frames={needed} or leave {variant} out")
        model = variant_config(base, variant, 0).model
        if model.flow_init != "none":  # a flow network of another shape than the file's
            try:
                load_flow_weights(flow_network(model), model.flow_init)
            except (ValueError, FileNotFoundError) as error:
                raise ValueError(f"variant {variant}: {error}") from error
    cache = open_data(base, out, progress=progress)
    results: dict[str, list[dict]] = {}
    for variant in variants:
        results[variant] = []
        for seed in range(seeds):
            cfg = variant_config(base, variant, seed)
            run_dir = out / "runs" / variant / f"seed{seed}"
            if summary_only and not (run_dir / "result.json").is_file():
                continue
            result = run_one(cfg, cache, run_dir, keep_checkpoints)
            results[variant].append(result)
            log(f"{variant:15s} seed {seed}: clip acc {result['clip_accuracy']:.3f}  epe {result['flow_epe']}")
    sweep: dict[str, dict[int, list[dict]]] = {}
    full = base.data.synthetic.train_per_class if not base.data.cache else None
    for n in sweep_sizes or []:
        for variant in sweep_variants or SWEEP_RUNS:
            sweep.setdefault(variant, {})[n] = []
            if full and n >= full and variant in results:  # the whole training split: reuse
                sweep[variant][n] = results[variant]
                continue
            # exactly the optimisation steps of a full-data run at every data size
            steps = base.optim.epochs * math.ceil(len(cache.split(base.data.train_split)) / base.optim.batch_size)
            small = math.ceil(min(n, full or n) * len(cache.classes) / base.optim.batch_size)
            epochs = math.ceil(steps / small)
            for seed in range(seeds):
                # as many checkpoints as a full-data run writes, not one per (short) epoch
                every = max(1, epochs // base.optim.epochs)
                extra = [f"data.max_train_per_class={n}", f"optim.steps={steps}", f"optim.checkpoint_every={every}"]
                cfg = variant_config(base, variant, seed, extra)
                run_dir = out / "sweep" / f"n{n}" / variant / f"seed{seed}"
                if summary_only and not (run_dir / "result.json").is_file():
                    continue
                result = run_one(cfg, cache, run_dir, keep_checkpoints)
                sweep[variant][n].append(result)
                log(f"sweep n={n:3d} {variant:10s} seed {seed}: clip acc {result['clip_accuracy']:.3f}")
    summarise(results, sweep, out, command)
    return out / "results.md"
