"""Training throughput: the joint model against the same 3D ResNet on precomputed flows and on frames,
and one process against two (DistributedDataParallel over gloo), on this machine's CPU cores.

Each variant does ``--steps`` timed training steps (after one untimed) on random input of the default
clip (16 frames, 56 x 56, ResNet-18, batch ``--batch``) through the trainer's own step: the model as
``fit`` builds it, :func:`flowaction.engine.step.forward_batch`, the backward pass and
:func:`flowaction.engine.optim.apply_update` (gradient clipping and Adam); the median step time gives
clips/s. Ratios are taken
within the same run. Two further tables compare alternatives within one run, alternating them so
that a busy machine slows both alike: Adam's three implementations (``optim.adam``: one optimiser
step of the ResNet-10 and ResNet-18 joint models), the 3D ResNet's memory layout (contiguous
against channels-last 3D, whole training steps), the ``allocator`` setting (glibc's defaults
against ``keep``, each in a fresh process since it is process-wide) and the flow network's
full-resolution level (``model.flow_refine``, joint model; ``--only-refine`` runs just that), float32
against bf16 autocast (``optim.amp``), the 3D ResNet's convolutions with whole kernels against
trimmed ones (``cpu.trim_kernels``), and the stem's input gradient from oneDNN against one forward
convolution over the stride's phases (``cpu.phase_input_grad``; ``--amp bf16`` times those steps under bf16
autocast); ``--only precision,trim,stem,allocator`` runs just those, into
``precision.json`` (the file is named after the first). Every run also counts the GFLOP of a joint step and of a ResNet-on-flows
step (``torch.utils.flop_counter``): their ratio is the step-time ratio at equal speed per FLOP.
``--set KEY=VALUE`` changes the configuration of every variant, e.g. the demo's shape
(``--set model.depth=10 --set data.crop=32 --batch 16``). Run::

    .venv/bin/python benchmarks/bench_train.py --steps 5 --out benchmarks/results/train
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from torch.utils.flop_counter import FlopCounterMode

from flowaction.config import load_config
from flowaction.engine.optim import apply_update, build_optimizer, clip_gradients, make_scaler
from flowaction.engine.step import TrainStep, forward_batch
from flowaction.models.build import build_model
from flowaction.speedups import apply_cpu_speedups
from flowaction.speedups.allocator import keep_heap_memory
from flowaction.speedups.kernels import phase_input_grad


SETTINGS: list[str] = []  # --set KEY=VALUE, applied to every variant's configuration
AMP = ["off"]  # --amp: the precision of the steps the tables other than precision's time


def _on_flows() -> str:
    """The name of the ResNet-on-precomputed-flows row, with the depth the settings give."""
    return f"ResNet-{load_config(None, SETTINGS).model.depth} on precomputed flows"


def _use_settings(settings: tuple[list[str], str]) -> None:
    """In a spawned worker process: the parent's ``--set`` overrides and ``--amp`` (module state is
    not inherited), as :func:`_settings` gives them."""
    SETTINGS[:], AMP[:] = settings[0], [settings[1]]


def _settings() -> tuple[list[str], str]:
    return list(SETTINGS), AMP[0]


def _batch(cfg, batch: int, flows: bool) -> dict:
    generator = torch.Generator().manual_seed(0)
    t, c = cfg.data.num_frames, cfg.data.crop
    out = {"frames": torch.rand(batch, 1, t, c, c, generator=generator), "label": torch.randint(0, 101, (batch,))}
    if flows:  # precomputed OpenCV flow, as model.classical_on=clean reads it from the cache
        out["classical"] = torch.randn(batch, t - 1, 2, c, c, generator=generator)
    return out


def step_times(model_input: str, batch: int, steps: int, threads: int, runner=None, cfg_extra=(),
               channels_last: bool = False, amp: str | None = None) -> list[float]:
    """Seconds of each of ``steps`` training steps (after one untimed) as the trainer takes them:
    :func:`~flowaction.engine.step.forward_batch` (or ``runner``, e.g. DDP around a
    :class:`~flowaction.engine.step.TrainStep`), the backward pass and
    :func:`~flowaction.engine.optim.apply_update` (clipping and Adam), on the model built and sped
    up as ``fit`` builds it."""
    torch.set_num_threads(threads)
    amp = AMP[0] if amp is None else amp
    cfg = load_config(None, [f"model.input={model_input}", "model.classical_on=clean", *SETTINGS, *cfg_extra])
    torch.manual_seed(0)
    model = apply_cpu_speedups(build_model(cfg, 101), cfg)
    if channels_last:
        model.action_net.to(memory_format=torch.channels_last_3d)
    optimizer = build_optimizer(cfg, model)
    scaler = make_scaler(cfg, torch.device("cpu"))
    run = runner(model) if runner else TrainStep(model)
    data = _batch(cfg, batch, model_input in ("dis", "farneback"))
    times = []
    for index in range(steps + 1):
        started = time.perf_counter()
        _, _, terms = run(data, torch.device("cpu"), cfg.loss, 0.05, False, 0.1, amp)
        terms["total"].backward()
        apply_update(model, optimizer, scaler, cfg, cfg.optim.lr)
        if index:  # the first step pays one-time costs
            times.append(time.perf_counter() - started)
    return times


def step_flops(model_input: str, batch: int) -> dict[str, float]:
    """GFLOP of one training step's convolutions and matrix products (forward and backward, as
    ``torch.utils.flop_counter`` counts them), in all and by network: the work a step cannot avoid."""
    # the kernels trimmed (the taps that only see padding are no work a step needs) and the stem's
    # input gradient through convolution_backward: the counter does not know the GEMM route to it
    cfg = load_config(None, [f"model.input={model_input}", "model.classical_on=clean", *SETTINGS,
                             "cpu.trim_kernels=true", "cpu.phase_input_grad=false"])
    torch.manual_seed(0)
    model = apply_cpu_speedups(build_model(cfg, 101), cfg)
    counter = FlopCounterMode(display=False)
    with counter:
        _, _, terms = forward_batch(model, _batch(cfg, batch, model_input in ("dis", "farneback")),
                                    torch.device("cpu"), cfg.loss, 0.05, False, 0.1, "off")
        terms["total"].backward()
    total = counter.get_total_flops() / 1e9
    flow = sum(counter.get_flop_counts().get("FlowNet", {}).values()) / 1e9  # 0 for the baselines
    return {"total": total, "flow network": flow, "action network": total - flow}


def _call_times(ways: dict, reps: int) -> dict[str, float]:
    """Median seconds of one call of each of ``ways`` (name -> function), the ways taking turns
    ``reps`` times (so that a busy machine slows them alike) after one untimed turn."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    for index in range(reps + 1):
        for name, run in ways.items():
            started = time.perf_counter()
            run()
            if index:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def adam_times(depth: int, reps: int, threads: int) -> dict[str, float]:
    """Median seconds of one Adam step per ``optim.adam`` implementation, on random gradients."""
    torch.set_num_threads(threads)
    cfg = load_config(None, [f"model.depth={depth}"])
    model = build_model(cfg, 101)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizers = {impl: build_optimizer(load_config(None, [f"model.depth={depth}", f"optim.adam={impl}"]), model)
                  for impl in ("fused", "foreach", "loop")}
    return _call_times({impl: optimizer.step for impl, optimizer in optimizers.items()}, reps)


def clip_times(depth: int, reps: int, threads: int) -> dict[str, float]:
    """Median seconds of clipping the joint model's gradients (``optim.grad_clip=10``, a norm within
    bounds, as on most steps): PyTorch's ``clip_grad_norm_`` against ``engine.optim.clip_gradients``."""
    torch.set_num_threads(threads)
    model = build_model(load_config(None, [f"model.depth={depth}"]), 101)
    generator = torch.Generator().manual_seed(0)
    for parameter in model.parameters():
        parameter.grad = torch.randn(parameter.shape, generator=generator) * 1e-4
    return _call_times({"clip_grad_norm_": lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0),
                        "clip_gradients": lambda: clip_gradients(model.parameters(), 10.0)}, reps)


def clip_table(threads: int) -> dict[str, dict[str, float]]:
    """Print and return :func:`clip_times` for the ResNet-10 and ResNet-18 joint models."""
    print(f"\n{'gradient clipping (ms)':30s} {'PyTorch':>8s} {'ours':>8s} {'ratio':>6s}")
    table = {}
    for depth in (10, 18):
        clip = table[f"resnet{depth}"] = clip_times(depth, 10, threads)
        print(f"{f'joint model, ResNet-{depth}':30s} {1000 * clip['clip_grad_norm_']:8.1f} "
              f"{1000 * clip['clip_gradients']:8.1f} {clip['clip_gradients'] / clip['clip_grad_norm_']:5.2f}x")
    return table


def _alternate(choices: tuple[str, ...], measure, rounds: int = 3) -> dict[str, float]:
    """Median of ``measure(choice)`` (a list of step seconds) per choice, the choices taking turns
    ``rounds`` times so that a busy machine slows them alike."""
    times: dict[str, list[float]] = {choice: [] for choice in choices}
    for _ in range(rounds):
        for choice in choices:
            times[choice] += measure(choice)
    return {choice: statistics.median(values) for choice, values in times.items()}


def layout_times(model_input: str, batch: int, steps: int, threads: int, rounds: int = 3) -> dict[str, float]:
    """Median training-step seconds with the 3D ResNet contiguous and channels-last 3D."""
    return _alternate(("contiguous", "channels_last_3d"), lambda layout: step_times(
        model_input, batch, steps, threads, channels_last=layout != "contiguous"), rounds)


def precision_times(model_input: str, batch: int, steps: int, threads: int, rounds: int = 3) -> dict[str, float]:
    """Median training-step seconds in float32 and under bf16 autocast (``optim.amp``), alternating."""
    return _alternate(("off", "bf16"), lambda amp: step_times(model_input, batch, steps, threads, amp=amp), rounds)


def trim_times(model_input: str, batch: int, steps: int, threads: int, rounds: int = 3) -> dict[str, float]:
    """Median training-step seconds of the 3D ResNet convolving with whole kernels and with the
    kernel taps that only see padding skipped (``cpu.trim_kernels``), alternating."""
    return _alternate(("whole", "trimmed"), lambda choice: step_times(
        model_input, batch, steps, threads, cfg_extra=[f"cpu.trim_kernels={str(choice == 'trimmed').lower()}"]),
        rounds)


def stem_times(model_input: str, batch: int, steps: int, threads: int, rounds: int = 3) -> dict[str, float]:
    """Median training-step seconds with the 3D ResNet stem's input gradient from oneDNN and as a
    forward convolution over the stride's phases (``cpu.phase_input_grad``), alternating."""
    return _alternate(("onednn", "phases"), lambda choice: step_times(
        model_input, batch, steps, threads, cfg_extra=[f"cpu.phase_input_grad={str(choice == 'phases').lower()}"]),
        rounds)


#: (batch, input channels, frames, size) of the stem inputs the op table times: the default clip's 5
#: flows at batch 8, with the fused frame (3 channels), the demo's crops, 14 flows, 112 px, 16 gray frames
STEM_SHAPES = ((8, 2, 5, 56), (8, 3, 5, 56), (16, 2, 5, 32), (8, 2, 14, 56), (16, 2, 5, 112), (8, 1, 16, 56))


def stem_op_times(threads: int, reps: int = 7) -> dict[str, dict[str, float]]:
    """Median seconds of the ResNet stem's input gradient alone (64 x C x 7 x 7 x 7 kernels, stride
    (1, 2, 2)) per input shape: oneDNN's convolution backward, the GEMM transposed convolution and
    the forward convolution over phases in float32, and oneDNN's and the phases' in bf16, alternating."""
    torch.set_num_threads(threads)
    table = {}
    for batch, channels, time_steps, size in STEM_SHAPES:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, channels, time_steps, size, size, generator=generator)
        weight = torch.randn(64, channels, 7, 7, 7, generator=generator)
        grad = torch.randn_like(torch.nn.functional.conv3d(x, weight, None, (1, 2, 2), 3))
        extra = (0, (size - 1) % 2, (size - 1) % 2)  # the transposed convolution's output size: x's
        half = [t.to(torch.bfloat16) for t in (x, weight, grad)]

        def onednn(x, weight, grad):
            return torch.ops.aten.convolution_backward(
                grad, x, weight, None, (1, 2, 2), (3, 3, 3), (1, 1, 1), False, (0, 0, 0), 1, (True, False, False))

        table[f"{batch} x {channels} x {time_steps} x {size} x {size}"] = _call_times({
            "onednn": lambda: onednn(x, weight, grad),
            "gemm": lambda: torch.ops.aten.slow_conv_transpose3d(
                grad, weight, (7, 7, 7), None, (1, 2, 2), (3, 3, 3), extra, (1, 1, 1)),
            "phases": lambda: phase_input_grad(grad, weight, x.shape[2:], (1, 2, 2), (3, 3, 3)),
            "onednn bf16": lambda: onednn(*half),
            "phases bf16": lambda: phase_input_grad(half[2], half[1], x.shape[2:], (1, 2, 2), (3, 3, 3)),
        }, reps)
    print(f"\n{'stem input gradient (ms)':30s} {'onednn':>8s} {'gemm':>8s} {'phases':>8s} {'ratio':>6s} "
          f"{'onednn bf16':>12s} {'phases bf16':>12s} {'ratio':>6s}")
    for name, row in table.items():
        print(f"{name:30s} {1000 * row['onednn']:8.1f} {1000 * row['gemm']:8.1f} {1000 * row['phases']:8.1f} "
              f"{row['phases'] / row['onednn']:5.2f}x {1000 * row['onednn bf16']:12.1f} "
              f"{1000 * row['phases bf16']:12.1f} {row['phases bf16'] / row['onednn bf16']:5.2f}x")
    return table


def refine_times(batch: int, steps: int, threads: int, rounds: int = 3) -> dict[str, float]:
    """Median joint-model training-step seconds without and with the flow network's
    full-resolution level (``model.flow_refine``), alternating."""
    return _alternate(("without", "with"), lambda choice: step_times(
        "learned", batch, steps, threads, cfg_extra=[f"model.flow_refine={str(choice == 'with').lower()}"]), rounds)


def _allocator_worker(keep: bool, model_input: str, batch: int, steps: int, threads: int, queue,
                      settings: tuple[list[str], str]) -> None:
    _use_settings(settings)
    if keep:
        keep_heap_memory()
    queue.put(step_times(model_input, batch, steps, threads))


def allocator_times(model_input: str, batch: int, steps: int, threads: int, rounds: int = 3) -> dict[str, float]:
    """Median training-step seconds with glibc's default allocator settings and with ``keep``."""
    context = mp.get_context("spawn")

    def measure(choice: str) -> list[float]:  # in a fresh process: the setting is process-wide
        queue = context.SimpleQueue()
        process = context.Process(target=_allocator_worker,
                                  args=(choice == "keep", model_input, batch, steps, threads, queue, _settings()))
        process.start()
        times = queue.get()
        process.join()
        return times

    return _alternate(("system", "keep"), measure, rounds)


def _ddp_worker(rank: int, world: int, port: int, batch: int, steps: int, queue,
                settings: tuple[list[str], str]) -> None:
    import torch.distributed as dist

    _use_settings(settings)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        wrap = lambda model: torch.nn.parallel.DistributedDataParallel(TrainStep(model))  # noqa: E731
        times = step_times("learned", batch, steps, 1, runner=wrap)
        if rank == 0:
            queue.put(times)
    finally:
        dist.destroy_process_group()


def ddp_times(world: int, batch: int, steps: int) -> list[float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(world, port, batch, steps, queue, _settings()), nprocs=world,
                       start_method="spawn")
    return queue.get()


def _compare(measure, args) -> dict:
    """Print and return ``measure``'s two alternatives (in the order it measures them) for the joint
    model and the ResNet on flows."""
    table = {}
    for name, model_input in (("joint (learned flow)", "learned"), (_on_flows(), "dis")):
        row = table[name] = measure(model_input, args.batch, args.steps, args.threads)
        first, second = row
        if len(table) == 1:
            print(f"\n{'training step (s)':40s} {first:>16s} {second:>16s} {'ratio':>6s}")
        print(f"{name:40s} {row[first]:16.3f} {row[second]:16.3f} {row[second] / row[first]:5.2f}x")
    return table


def flops_table(batch: int) -> dict:
    """Print and return the GFLOP of a joint step and of a ResNet-on-flows step, and their ratio:
    the step-time ratio the joint model would have if every FLOP cost the same time."""
    table = {"joint (learned flow)": step_flops("learned", batch), _on_flows(): step_flops("dis", batch)}
    print(f"\n{f'GFLOP per training step (batch {batch})':40s} {'total':>8s} {'flow net':>9s} {'action net':>11s}")
    for name, row in table.items():
        print(f"{name:40s} {row['total']:8.2f} {row['flow network']:9.2f} {row['action network']:11.2f}")
    joint, flows = table.values()
    table["ratio"] = joint["total"] / flows["total"]
    # with a free flow network the joint model still pays its action network's extra work: the
    # gradient into the flows (the stem's input gradient), which a ResNet on fixed input skips
    table["ratio_without_flow_network"] = joint["action network"] / flows["total"]
    print(f"joint / precomputed-flow GFLOP: {table['ratio']:.2f}x; without the flow network's own: "
          f"{table['ratio_without_flow_network']:.2f}x")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="clips per step and process")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train"))
    parser.add_argument("--only-refine", action="store_true",
                        help="only the refine table (joint step without / with model.flow_refine), into refine.json")
    parser.add_argument("--only", default="",
                        help="comma-separated: precision, trim, stem, allocator, clip (only these tables, into "
                             "<first name>.json)")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off",
                        help="precision of the steps of the tables other than precision's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration override for every variant (repeatable)")
    args = parser.parse_args(argv)
    SETTINGS[:], AMP[:] = args.set, [args.amp]
    if args.only:
        tables = {"precision": precision_times, "trim": trim_times, "stem": stem_times,
                  "allocator": allocator_times}  # whole steps
        names = args.only.split(",")
        unknown = [name for name in names if name not in (*tables, "clip")]
        if unknown:
            parser.error(f"--only: unknown table(s) {', '.join(unknown)}; choose from {', '.join(tables)}, clip")
        results = {name: _compare(tables[name], args) for name in names if name in tables}
        if "clip" in names:
            results["clip_s"] = clip_table(args.threads)
        if "stem" in names:
            results["stem_grad_op_s"] = stem_op_times(args.threads)
        results["step_gflop"] = flops_table(args.batch)
        if "precision" in results:
            joint, flows = (results["precision"][name] for name in ("joint (learned flow)", _on_flows()))
            results["joint_overhead"] = {amp: joint[amp] / flows[amp] for amp in ("off", "bf16")}
            print(f"joint step / precomputed-flow step: float32 {joint['off'] / flows['off']:.2f}x, "
                  f"bf16 {joint['bf16'] / flows['bf16']:.2f}x")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{names[0]}.json").write_text(json.dumps({"batch": args.batch, "threads": args.threads, "amp": args.amp,
                                                             "settings": args.set, "torch": torch.__version__,
                                                             **results}, indent=1))
        return 0
    refine = refine_times(args.batch, args.steps, args.threads)
    print(f"{'joint training step (s)':40s} {'without refine':>16s} {'with refine':>16s} {'ratio':>6s}")
    print(f"{'':40s} {refine['without']:16.3f} {refine['with']:16.3f} {refine['with'] / refine['without']:5.2f}x\n")
    if args.only_refine:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "refine.json").write_text(json.dumps({"batch": args.batch, "threads": args.threads,
                                                          "torch": torch.__version__, "refine_step_s": refine}, indent=1))
        return 0
    rows = {}
    depth = load_config(None, SETTINGS).model.depth
    for name, model_input in (("joint (learned flow)", "learned"), (_on_flows(), "dis"),
                              (f"ResNet-{depth} on 16 gray frames", "frames")):
        times = step_times(model_input, args.batch, args.steps, args.threads)
        rows[f"{name}, 1 process x {args.threads} threads"] = (statistics.median(times), args.batch)
    one = step_times("learned", args.batch, args.steps, 1)
    rows["joint, 1 process x 1 thread"] = (statistics.median(one), args.batch)
    two = ddp_times(2, args.batch, args.steps)
    rows["joint, 2 processes x 1 thread (DDP, gloo)"] = (statistics.median(two), 2 * args.batch)
    print(f"{'variant':50s} {'step s':>8s} {'clips/s':>8s}")
    results = {}
    for name, (seconds, clips) in rows.items():
        results[name] = {"median_step_s": seconds, "clips_per_s": clips / seconds}
        print(f"{name:50s} {seconds:8.3f} {clips / seconds:8.2f}")
    joint = results[f"joint (learned flow), 1 process x {args.threads} threads"]["median_step_s"]
    flows = results[f"{_on_flows()}, 1 process x {args.threads} threads"]["median_step_s"]
    ddp = results["joint, 2 processes x 1 thread (DDP, gloo)"]["clips_per_s"]
    single = results["joint, 1 process x 1 thread"]["clips_per_s"]
    print(f"joint step / precomputed-flow step: {joint / flows:.2f}x; 2 processes / 1 process (1 thread each): "
          f"{ddp / single:.2f}x clips/s")
    results["joint_overhead"] = joint / flows
    results["ddp_speedup_2_over_1"] = ddp / single
    print(f"\n{'Adam step (ms)':30s} {'fused':>8s} {'foreach':>8s} {'loop':>8s} {'loop/fused':>11s}")
    results["adam_step_s"] = {}
    for depth in (10, 18):
        adam = adam_times(depth, 10, args.threads)
        results["adam_step_s"][f"resnet{depth}"] = adam
        print(f"{f'joint model, ResNet-{depth}':30s} {1000 * adam['fused']:8.1f} {1000 * adam['foreach']:8.1f} "
              f"{1000 * adam['loop']:8.1f} {adam['loop'] / adam['fused']:10.2f}x")
    results["clip_s"] = clip_table(args.threads)
    results["refine_step_s"] = refine
    results["precision_step_s"] = _compare(precision_times, args)
    joint, flows = (results["precision_step_s"][name] for name in ("joint (learned flow)", _on_flows()))
    results["joint_overhead_bf16"] = joint["bf16"] / flows["bf16"]
    print(f"joint step / precomputed-flow step under bf16: {results['joint_overhead_bf16']:.2f}x")
    results["trim_step_s"] = _compare(trim_times, args)
    results["stem_grad_step_s"] = _compare(stem_times, args)
    results["stem_grad_op_s"] = stem_op_times(args.threads)
    results["layout_step_s"] = _compare(layout_times, args)
    results["step_gflop"] = flops_table(args.batch)
    results["allocator_step_s"] = _compare(allocator_times, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps({"batch": args.batch, "threads": args.threads,
                                                     "torch": torch.__version__, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
