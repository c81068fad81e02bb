"""How much of the articulated figure's own motion each flow method captures, on the actions benchmark.

The clips are the generated actions benchmark's test split (``ActionSpec()`` defaults, seed 0; clip
``i`` has label ``i % K``): held-out photographs behind and on the figure, a moving camera, exact
flow. Each clip's layers are drawn again from a fresh copy of its random stream (the generator draws
the layers, then the camera, then the photometric nuisance), so the layer id of every pixel is known;
the flow rendered from those ids is checked to be the clip's own. Figure pixels are the body parts'
(every layer but the background and the distractors), background pixels the background layer's.

For every pair ``p -> p+1`` that has a triplet ``(p, p+1, p+2)``, over the valid pixels only (they
land on their own layer inside frame ``p+1``):

* end-point error over the figure's pixels and over the background's;
* the figure's own motion: the camera's part of a pair is taken as the per-axis median of the true
  flow over that pair's valid background pixels, and subtracted from both the truth and the estimate
  (``rel = flow - median``); the mean true relative speed on the figure, and each method's gain
  ``sum(est_rel . true_rel) / sum(|true_rel|^2)`` over the figure's pixels: 1 when the estimate holds
  all of the figure's motion relative to the background, 0 when it holds none of it (the projection
  of the estimate on the truth; errors orthogonal to the truth do not lower it, the EPE shows those).

Methods: ``truth`` (the ground truth itself: a check, EPEs 0 and gain 1), ``zero``, each flow network
of ``--flow-weights``, DIS and Farneback. Results per class and over all clips (pixel-weighted).

Run: ``.venv/bin/python benchmarks/bench_figure_flow.py [--flow-weights default,actions,FILE]
[--clips-per-class 4] [--input-scale 1] [--threads 1] [--out benchmarks/results/figure_flow.json]``;
``--input-scale 2`` runs every network on the frames enlarged twice (``model.flow_input_scale``);
without it each network runs at its own (a run checkpoint's from its config, 1 for a ``flownet.pt``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this script

from flowaction.data import actions  # noqa: E402
from flowaction.data.actions import ActionSpec, render_action_clip  # noqa: E402
from flowaction.data.layers import layer_flow, render_layers  # noqa: E402
from flowaction.data.synthetic import clip_rng  # noqa: E402
from flowaction.inference.video_flow import classical_flows, learned_flows, video_pairs  # noqa: E402
from flow_weights import flow_models  # noqa: E402

SEED = 0  # the generated benchmark's default seed
SPLIT = "test"


def clip_with_layers(index: int, spec: ActionSpec):
    """Clip ``index`` of the test split, its layer ids ``(T, H, W)`` and its figure layers' ids."""
    label = index % spec.num_classes
    clip = render_action_clip(label, clip_rng(SEED, SPLIT, index), spec, SPLIT)
    rng = clip_rng(SEED, SPLIT, index)  # a fresh copy: the same draws, in the generator's order
    layers, _ = actions._layers(rng, spec, SPLIT, spec.classes[label])
    camera = actions._camera(rng, spec)
    _, ids, to_image = render_layers(layers, camera, spec.size)
    flow, valid, _ = layer_flow(ids, to_image, spec.size)
    if not (np.array_equal(flow, clip.flow) and np.array_equal(valid, clip.valid)):
        raise AssertionError(f"clip {index}: the layers drawn again do not give the clip's flow")
    figure = [i for i, layer in enumerate(layers)
              if layer.name != "background" and not layer.name.startswith("distractor")]
    return clip, ids, np.array(figure)


class Tally:
    """Pixel sums of one group of clips (a class, or all of them)."""

    def __init__(self, methods: tuple[str, ...]) -> None:
        self.figure_pixels = self.background_pixels = self.skipped_pairs = 0
        self.speed = self.relative_speed = self.relative_square = 0.0
        self.figure_error = dict.fromkeys(methods, 0.0)
        self.background_error = dict.fromkeys(methods, 0.0)
        self.projection = dict.fromkeys(methods, 0.0)

    def add(self, other: "Tally") -> None:
        for key, value in vars(other).items():
            mine = getattr(self, key)
            if isinstance(value, dict):
                for method, amount in value.items():
                    mine[method] += amount
            else:
                setattr(self, key, mine + value)

    def result(self) -> dict:
        def share(total: float, count: float) -> float | None:
            return total / count if count else None

        return {
            "figure_pixels": self.figure_pixels, "background_pixels": self.background_pixels,
            "pairs_without_background": self.skipped_pairs,
            "mean_figure_speed_px": share(self.speed, self.figure_pixels),
            "mean_relative_speed_px": share(self.relative_speed, self.figure_pixels),
            "methods": {method: {"figure_epe": share(self.figure_error[method], self.figure_pixels),
                                 "background_epe": share(self.background_error[method], self.background_pixels),
                                 "gain": share(self.projection[method], self.relative_square)}
                        for method in self.figure_error},
        }


def score_clip(truth: np.ndarray, valid: np.ndarray, ids: np.ndarray, figure_ids: np.ndarray,
               flows: dict[str, np.ndarray]) -> Tally:
    """Sums of one clip; ``truth`` and every flow ``(N, 2, H, W)``, ``valid`` and ``ids`` ``(N, H, W)``."""
    tally = Tally(tuple(flows))
    for row in range(len(truth)):
        figure = valid[row] & np.isin(ids[row], figure_ids)
        background = valid[row] & (ids[row] == 0)
        true_figure, true_background = truth[row][:, figure], truth[row][:, background]  # (2, n)
        if not background.any():
            tally.skipped_pairs += 1  # no camera estimate: the pair is left out of every sum
            continue
        camera = np.median(true_background, axis=1, keepdims=True)
        true_relative = true_figure - camera
        tally.figure_pixels += int(figure.sum())
        tally.background_pixels += int(background.sum())
        tally.speed += float(np.linalg.norm(true_figure, axis=0).sum())
        tally.relative_speed += float(np.linalg.norm(true_relative, axis=0).sum())
        tally.relative_square += float((true_relative**2).sum())
        for method, flow in flows.items():
            estimate_figure = flow[row][:, figure].astype(np.float64)
            tally.figure_error[method] += float(np.linalg.norm(estimate_figure - true_figure, axis=0).sum())
            tally.background_error[method] += float(
                np.linalg.norm(flow[row][:, background] - true_background, axis=0).sum())
            tally.projection[method] += float(((estimate_figure - camera) * true_relative).sum())
    return tally


def method_flows(clip, pairs: np.ndarray, models: dict, methods: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every method's flow of the clip's pairs, ``(N, 2, H, W)`` each."""
    flows = {}
    for method in methods:
        if method == "truth":
            flows[method] = clip.flow[pairs]
        elif method == "zero":
            flows[method] = np.zeros_like(clip.flow[pairs])
        elif method in models:
            flows[method] = learned_flows(models[method], clip.frames, pairs)
        else:
            flows[method] = classical_flows(clip.frames, pairs, method)
    return flows


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow-weights", default="default,actions",
                        help="comma-separated flow networks: shipped names (default, actions) or files")
    parser.add_argument("--clips-per-class", type=int, default=4, help="test clips of each action class")
    parser.add_argument("--input-scale", type=int, default=None,
                        help="run the networks on the frames enlarged this many times (model.flow_input_scale; "
                             "default: each file's own, 1 for a flownet.pt, a run checkpoint's from its config)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/figure_flow.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    spec = ActionSpec()
    if args.input_scale is not None and args.input_scale < 1:
        raise SystemExit(f"--input-scale must be >= 1, got {args.input_scale}")
    models = flow_models(args.flow_weights)
    for model in models.values() if args.input_scale is not None else ():
        model.flow_net.input_scale = args.input_scale
    methods = ("truth", "zero", *models, "dis", "farneback")
    pairs = video_pairs(spec.num_frames, 1)
    overall = Tally(methods)
    classes = {name: Tally(methods) for name in spec.classes[:spec.num_classes]}
    for index in range(args.clips_per_class * spec.num_classes):
        clip, ids, figure_ids = clip_with_layers(index, spec)
        flows = method_flows(clip, pairs, models, methods)
        tally = score_clip(clip.flow[pairs].astype(np.float64), clip.valid[pairs], ids[pairs], figure_ids, flows)
        classes[spec.classes[clip.label]].add(tally)
        overall.add(tally)
    report = {"seed": SEED, "split": SPLIT, "size": spec.size, "frames": spec.num_frames,
              "clips_per_class": args.clips_per_class, "clips": args.clips_per_class * spec.num_classes,
              "pairs_per_clip": len(pairs), "threads": args.threads, "weights": args.flow_weights,
              "input_scale": {name: model.flow_net.input_scale for name, model in models.items()},
              "methods": list(methods), "overall": overall.result(),
              "classes": {name: tally.result() for name, tally in classes.items()}}
    total = report["overall"]
    print("| method | figure EPE (px) | background EPE (px) | gain of the figure's own motion |")
    print("| --- | --- | --- | --- |")
    for method, row in total["methods"].items():
        print(f"| {method} | {fmt(row['figure_epe'])} | {fmt(row['background_epe'])} | {fmt(row['gain'])} |")
    print(f"| (truth) {report['clips']} clips, {total['figure_pixels']} figure and {total['background_pixels']} "
          f"background pixels; figure speed {fmt(total['mean_figure_speed_px'], 2)} px, relative to the "
          f"background {fmt(total['mean_relative_speed_px'], 2)} px | | | |")
    print()
    print("| class | relative speed (px) | " + " | ".join(f"gain {m}" for m in methods) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in methods) + " |")
    for name, result in report["classes"].items():
        gains = " | ".join(fmt(result["methods"][m]["gain"]) for m in methods)
        print(f"| {name} | {fmt(result['mean_relative_speed_px'], 2)} | {gains} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
