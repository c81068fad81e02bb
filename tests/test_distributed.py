"""Scale: the epoch sampler, loader workers that see the epoch, gradient accumulation, exact resume
inside an epoch, non-finite losses, and DDP with gloo on CPU processes (torchrun)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import flowaction.engine.fit as fit_module
import flowaction.engine.step as step_module
from flowaction.checkpoint import load_checkpoint
from flowaction.config import from_dict
from flowaction.data.sampler import EpochSampler
from flowaction.data.source import open_data
from flowaction.engine.loop import EpochState, NonFiniteLoss, train_one_epoch
from flowaction.engine.loaders import begin_epoch, make_loader
from flowaction.models.build import build_model
from flowaction.speedups import apply_cpu_speedups
from flowaction.engine.optim import build_optimizer
from flowaction.engine.fit import fit

TINY = ["model.depth=10", "model.flow_width=8", "data.crop=32", "data.num_frames=7", "data.synthetic.num_frames=7",
        "data.synthetic.size=36", "data.synthetic.num_classes=4", "data.synthetic.train_per_class=6",
        "data.synthetic.val_per_class=1", "data.synthetic.test_per_class=1", "optim.batch_size=4", "threads=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "data"
    open_data(from_dict({}, TINY + [f"data.synthetic_dir={path}"]), path.parent)
    return path


def _cfg(data_dir, *extra):
    return from_dict({}, TINY + [f"data.synthetic_dir={data_dir}", *extra])


def test_sampler_shares_cover_every_item_once_per_epoch_and_resume_skips_batches():
    shares = [list(EpochSampler(10, True, seed=3, rank=r, world=2)) for r in (0, 1)]
    items = [i for share in shares for _, i in share]
    assert sorted(items) == list(range(10)) and len(shares[0]) == len(shares[1]) == 5
    odd = [[i for _, i in EpochSampler(7, True, seed=3, rank=r, world=3)] for r in range(3)]
    assert set(sum(odd, [])) == set(range(7)) and {len(o) for o in odd} == {3}  # padded to equal shares
    sampler = EpochSampler(10, True, seed=3, batch_size=4)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for _, i in first] != [i for _, i in second] and all(e == 1 for e, _ in second)
    sampler.set_epoch(1, skip_batches=2)
    assert list(sampler) == second[8:] and len(sampler) == 2


def _epoch_crops(loader, seed, epoch):
    begin_epoch(loader, epoch)
    return torch.cat([batch["frames"] for batch in loader])


def test_persistent_workers_see_the_epoch(data_dir):
    cfg = _cfg(data_dir, "data.num_workers=2")
    cache = open_data(cfg, data_dir.parent)
    loader = make_loader(cfg, cache, "train", "train", shuffle=True)
    assert loader.persistent_workers
    epoch0, epoch1 = _epoch_crops(loader, cfg.seed, 0), _epoch_crops(loader, cfg.seed, 1)
    assert not torch.equal(epoch0, epoch1)  # the workers drew epoch 1's crops and jitter
    again = make_loader(cfg, cache, "train", "train", shuffle=True)
    assert torch.equal(_epoch_crops(again, cfg.seed, 0), epoch0)  # and reproducibly
    assert torch.equal(_epoch_crops(again, cfg.seed, 1), epoch1)


def test_accumulation_steps_once_per_k_batches_on_the_mean_gradient(data_dir, monkeypatch):
    cfg = _cfg(data_dir, "optim.accumulate=3", "augment.noise_std=0", "optim.grad_clip=0")
    cache = open_data(cfg, data_dir.parent)
    torch.manual_seed(0)
    model = build_model(cfg, len(cache.classes))
    loader = make_loader(cfg, cache, "train", "train", shuffle=True)  # 24 clips: 6 batches of 4 -> 2 steps
    begin_epoch(loader, 0)
    batches = list(loader)
    # the expected gradient of the first step: the mean of the first 3 batches' gradients
    reference = build_model(cfg, len(cache.classes))
    reference.load_state_dict(model.state_dict())
    reference.train()
    grads = None
    from flowaction.engine.step import forward_batch

    for batch in batches[:3]:
        reference.zero_grad()
        _, _, terms = forward_batch(reference, batch, torch.device("cpu"), cfg.loss, 0.0, False,
                                    cfg.model.flow_grad_scale)
        terms["total"].backward()
        current = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in reference.parameters()]
        grads = current if grads is None else [a + b for a, b in zip(grads, current)]
    expected = [g / 3 for g in grads]
    optimizer = build_optimizer(cfg, model)
    seen = []
    real_step = optimizer.step

    def spy(*args, **kwargs):
        seen.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(optimizer, "step", spy)
    begin_epoch(loader, 0)
    _, step = train_one_epoch(model, loader, optimizer, cfg, torch.device("cpu"), 0, 0, 100, progress=False)
    assert step == 2 and len(seen) == 2
    for got, want in zip(seen[0], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


class _Killed(Exception):
    pass


def test_resume_inside_an_epoch_ends_with_the_weights_of_an_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    torch.use_deterministic_algorithms(True)
    try:
        cfg = _cfg(data_dir, "optim.epochs=2", "optim.checkpoint_steps=1", "augment.noise_std=0.05")
        cache = open_data(cfg, data_dir.parent)
        fit(cfg, cache, tmp_path / "whole", progress=False, log=lambda *_: None)
        # the same run "killed" right after step 4's checkpoint (inside epoch 0: 6 steps an epoch)
        real_save = fit_module.save_checkpoint

        def save_then_die(path, state):
            real_save(path, state)
            if state.get("partial") and state["step"] == 4:
                raise _Killed

        monkeypatch.setattr(fit_module, "save_checkpoint", save_then_die)
        with pytest.raises(_Killed):
            fit(cfg, cache, tmp_path / "killed", progress=False, log=lambda *_: None)
        monkeypatch.setattr(fit_module, "save_checkpoint", real_save)
        state = load_checkpoint(tmp_path / "killed" / "last.pt")
        assert state["epoch"] == 0 and state["partial"]["batches"] == 4
        fit(cfg, cache, tmp_path / "killed", resume=True, progress=False, log=lambda *_: None)
    finally:
        torch.use_deterministic_algorithms(False)
    whole, resumed = (load_checkpoint(tmp_path / name / "last.pt") for name in ("whole", "killed"))
    assert whole["step"] == resumed["step"] == 12
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key  # bitwise
    rows = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # each epoch logged once: the interrupted epoch was finished, not restarted


def test_a_nan_loss_stops_with_the_step_and_term_or_is_skipped(data_dir, tmp_path, monkeypatch):
    cfg = _cfg(data_dir, "optim.epochs=1")
    cache = open_data(cfg, data_dir.parent)
    real = step_module.forward_batch
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        logits, flows, terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            terms["photometric"] = terms["photometric"] * float("nan")
            terms["total"] = terms["total"] + terms["photometric"]
        return logits, flows, terms

    monkeypatch.setattr(step_module, "forward_batch", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"step 2 \(epoch 0\): loss term\(s\) photometric, total"):
        fit(cfg, cache, tmp_path / "stop", progress=False, log=lambda *_: None)
    calls["n"] = 0
    summary = fit(from_dict({}, TINY + [f"data.synthetic_dir={data_dir}", "optim.epochs=1", "optim.nonfinite=skip"]),
                  cache, tmp_path / "skip", progress=False, log=lambda *_: None)
    assert summary["steps"] == 5  # 6 batches, one step skipped
    state = load_checkpoint(tmp_path / "skip" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    header, train_row = (tmp_path / "skip" / "metrics.csv").read_text().splitlines()[:2]
    assert float(dict(zip(header.split(","), train_row.split(",")))["skipped_steps"]) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(launch: list[str], out: Path, data_dir: Path, extra_env=None, timeout=240,
              args: list[str] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "flowaction", "train", "--out", str(out),
               "--no-progress", *TINY, f"data.synthetic_dir={data_dir}", "optim.epochs=2", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def test_torchrun_two_processes_share_each_epoch_rank_zero_writes_and_one_process_reaches_the_same_weights(
        data_dir, tmp_path):
    # no input noise: its stream is per process by design
    done = _torchrun(["--standalone", "--nproc-per-node", "2"], tmp_path / "ddp", data_dir, args=["augment.noise_std=0"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("epoch   1  train loss") == 1  # printed once, by rank 0
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    # 24 training clips, 12 per process, batches of 4: 3 steps an epoch, 2 epochs
    assert state["step"] == 6
    rows = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    # One process with the same global batch of 8: each step accumulates the two processes' batches
    # of 4 (batch norm normalises each process's batch on its own, so the reference does too).
    cfg = _cfg(data_dir, "augment.noise_std=0", "optim.accumulate=2", "optim.epochs=2")
    cache = open_data(cfg, data_dir.parent)
    torch.manual_seed(cfg.seed)
    model = apply_cpu_speedups(build_model(cfg, len(cache.classes)), cfg)  # as fit builds it
    initial = {name: value.detach().clone() for name, value in model.named_parameters()}
    optimizer = build_optimizer(cfg, model)
    dataset = make_loader(cfg, cache, "train", "train", shuffle=True).dataset
    step = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process (threads=1): the same sums in the same order
    for epoch in range(2):
        shares = []
        for rank in (0, 1):
            sampler = EpochSampler(len(dataset), True, cfg.seed, rank, 2, 4)
            sampler.set_epoch(epoch)
            shares.append([(epoch, int(i)) for i in sampler.share()])
        order = [item for k in range(3) for share in shares for item in share[4 * k: 4 * k + 4]]
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=order)
        _, step = train_one_epoch(model, loader, optimizer, cfg, torch.device("cpu"), epoch, step, 6, progress=False)
    torch.set_num_threads(threads)
    assert step == 6
    # Adam divides by the root of the squared gradient, so entries whose gradient is ~0 (the flow
    # network behind its zero-initialised output layer) turn float rounding into whole steps: each
    # tensor's update is compared as a whole
    for name, value in model.named_parameters():
        update = value.detach() - initial[name]
        gap = (state["model"][name] - value.detach()).norm()
        assert gap <= 1e-3 * update.norm() + 1e-8, (name, float(gap), float(update.norm()))


def test_two_nodes_on_localhost_through_the_rendezvous_endpoint(data_dir, tmp_path):
    port = _free_port()
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "flowaction-test"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", *common, "--node-rank", str(node), "-m",
                   "flowaction", "train", "--out", str(tmp_path / "nodes"), "--no-progress", *TINY,
                   f"data.synthetic_dir={data_dir}", "optim.epochs=1"]
        nodes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert load_checkpoint(tmp_path / "nodes" / "last.pt")["step"] == 3
    assert sum("2 processes" in out for out, _ in outputs) == 1


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    import signal
    import time

    data = ["data.synthetic.train_per_class=12", f"data.synthetic_dir={tmp_path / 'data'}"]  # 12 steps an epoch
    open_data(from_dict({}, TINY + data), tmp_path)  # generated once, before the two runs read it side by side
    args = ["--no-progress", *TINY, *data, "optim.epochs=2", "optim.checkpoint_steps=1"]
    base = [sys.executable, "-m", "flowaction", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the uninterrupted run goes alongside the one to be killed (one thread each, two cores)
    errors = tmp_path / "whole.err"
    with errors.open("wb") as stderr:
        whole_run = subprocess.Popen(base + ["--out", str(tmp_path / "whole"), *args], stdout=subprocess.DEVNULL,
                                     stderr=stderr, env=env)
    try:
        victim = subprocess.Popen(base + ["--out", str(tmp_path / "killed"), *args], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env)
        last = tmp_path / "killed" / "last.pt"
        deadline = time.time() + 240
        while time.time() < deadline and victim.poll() is None:
            if last.is_file():
                try:
                    if load_checkpoint(last)["step"] >= 5:
                        break
                except ValueError:
                    pass  # never a half-written file (atomic rename), but be safe while polling
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = load_checkpoint(last)
        assert killed_at["partial"] is not None and killed_at["epoch"] == 0  # killed inside the first epoch
        subprocess.run(base + ["--out", str(tmp_path / "killed"), "--resume"], check=True, capture_output=True,
                       env=env, timeout=300)
        assert whole_run.wait(timeout=300) == 0, errors.read_text()
    finally:
        if whole_run.poll() is None:  # a failure above: do not leave it running
            whole_run.kill()
    whole, resumed = (load_checkpoint(tmp_path / name / "last.pt") for name in ("whole", "killed"))
    assert whole["step"] == resumed["step"] == 24
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_keeps_the_flow_losses_in_float32(data_dir, tmp_path, amp):
    from flowaction.engine.step import forward_batch

    cfg = _cfg(data_dir, f"optim.amp={amp}", "optim.epochs=1", "augment.noise_std=0")
    cache = open_data(cfg, data_dir.parent)
    torch.manual_seed(0)
    model = build_model(cfg, len(cache.classes)).train()
    batch = next(iter(make_loader(cfg, cache, "train", "train", shuffle=True)))
    full = forward_batch(model, batch, torch.device("cpu"), cfg.loss, 0.0, False, 0.1, "off")
    mixed = forward_batch(model, batch, torch.device("cpu"), cfg.loss, 0.0, False, 0.1, amp)
    assert mixed[1].dtype == torch.float32 and all(t.dtype == torch.float32 for t in mixed[2].values())
    # the flow network's output in reduced precision, the losses on it in float32: close to fp32
    for term in ("photometric", "smoothness"):
        assert float(mixed[2][term]) == pytest.approx(float(full[2][term]), rel=0.05), term
    if amp == "fp16":  # training with the gradient scaler, whose state is checkpointed for resume
        summary = fit(cfg, cache, tmp_path / amp, progress=False, log=lambda *_: None)
        assert summary["steps"] == 6
        assert load_checkpoint(tmp_path / amp / "last.pt")["scaler"]["scale"] > 0


@pytest.mark.parametrize("bf16_flags", [{"amx_bf16", "avx512_bf16"}, {"avx512_bf16"}, set()], ids=["amx", "avx512", "none"])
def test_amp_auto_picks_bf16_only_on_a_cpu_with_bf16_instructions_and_the_run_keeps_it(
        data_dir, tmp_path, monkeypatch, bf16_flags):
    from flowaction.config import load_config
    from flowaction.engine import device as device_module
    from flowaction.engine.device import resolve_amp

    real = device_module.cpu_flags() - {"amx_bf16", "avx512_bf16"}
    monkeypatch.setattr(device_module, "cpu_flags", lambda: real | bf16_flags)
    expected = "bf16" if bf16_flags else "off"
    amp, reason = resolve_amp("auto", torch.device("cpu"))
    assert amp == expected
    assert ("AMX" in reason) == ("amx_bf16" in bf16_flags)  # the log names the units it found
    assert resolve_amp("fp16", torch.device("cpu")) == ("fp16", "set")  # an explicit choice is kept
    said = []
    cfg = _cfg(data_dir, "optim.amp=auto", "optim.epochs=1")
    summary = fit(cfg, open_data(cfg, data_dir.parent), tmp_path / "run", progress=False, log=said.append)
    assert summary["amp"] == expected and cfg.optim.amp == "auto"  # the caller's config is not changed
    assert any(f"optim.amp=auto -> {expected}" in line for line in said)
    # the run's config.yaml holds what ran, so --resume on another machine trains in the same precision
    assert load_config(tmp_path / "run" / "config.yaml", []).optim.amp == expected
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["optim"]["amp"] == expected


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_on_a_gpu_takes_bf16_only_where_it_is_not_emulated(monkeypatch, native):
    from flowaction.engine.device import resolve_amp

    # a GPU before Ampere reports bf16 "supported" through emulation, which is slower than float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert resolve_amp("auto", torch.device("cuda"))[0] == ("bf16" if native else "off")


def _check_config(rank: int, port: int, texts: list[str], results) -> None:
    import torch.distributed as dist

    from flowaction.engine import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        distributed.same_everywhere(distributed.Context(rank, 2), texts[rank], "config")
        results.put((rank, "same"))
    except ValueError as error:
        results.put((rank, str(error)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("texts,same", [(["a", "a"], True), (["a", "b"], False)])
def test_ranks_with_another_config_stop_with_one_clear_error(texts, same):
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_check_config, args=(_free_port(), texts, results), nprocs=2, start_method="spawn")
    answers = dict(results.get() for _ in range(2))
    if same:
        assert answers == {0: "same", 1: "same"}
    else:  # every rank stops, with the same message naming the ranks that differ
        assert answers[0] == answers[1] and "ranks [1] have another config than rank 0" in answers[0]


@pytest.mark.slow  # torch.compile spends about 100 s compiling on this CPU
def test_compiled_training_step_matches_eager(data_dir, tmp_path):
    import csv

    runs = {}
    for name, extra in (("eager", []), ("compiled", ["optim.compile=true"])):
        cfg = _cfg(data_dir, "optim.steps=1", "augment.noise_std=0", *extra)
        fit(cfg, open_data(cfg, data_dir.parent), tmp_path / name, progress=False, log=lambda *_: None)
        with open(tmp_path / name / "metrics.csv") as handle:
            runs[name] = next(row for row in csv.DictReader(handle) if row["split"] == "train")
    # the same forward pass: the loss of the one step agrees (compiled kernels sum in another order)
    for term in ("total", "classification", "photometric", "smoothness"):
        assert float(runs["compiled"][term]) == pytest.approx(float(runs["eager"][term]), rel=1e-4), term
    eager, compiled = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("eager", "compiled"))
    for key, value in eager.items():  # one Adam step of lr 1e-3 apart at most
        if value.is_floating_point():
            torch.testing.assert_close(compiled[key], value, atol=2e-3, rtol=0)


def test_channels_last_trains_the_same_model_in_the_other_layout(data_dir, tmp_path, monkeypatch):
    from flowaction.checkpoint import load_weights
    from flowaction.engine.step import forward_batch

    cfg = _cfg(data_dir, "augment.noise_std=0")
    cache = open_data(cfg, data_dir.parent)
    batch = next(iter(make_loader(cfg, cache, "train", "train", shuffle=True)))
    torch.manual_seed(0)
    plain = build_model(cfg, len(cache.classes))
    other = build_model(cfg, len(cache.classes))
    other.load_state_dict(plain.state_dict())
    other.action_net.to(memory_format=torch.channels_last_3d)
    conv = other.action_net.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    results = []
    for model in (plain, other):
        _, _, terms = forward_batch(model, batch, torch.device("cpu"), cfg.loss)
        terms["total"].backward()
        results.append((terms["total"].detach(), model.action_net.conv1.weight.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-3, atol=1e-5)
    # the switch: fit converts the action network; its checkpoint loads into a contiguous model
    seen = {}
    real = fit_module.train_one_epoch

    def spy(model, *args, **kwargs):
        seen["layout"] = model.action_net.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", spy)
    fit(_cfg(data_dir, "optim.epochs=1", "optim.channels_last=true"), cache, tmp_path / "cl", progress=False,
        log=lambda *_: None)
    assert seen["layout"] is True
    state = load_checkpoint(tmp_path / "cl" / "best.pt")
    contiguous = build_model(cfg, len(cache.classes))
    load_weights(contiguous, state["model"], "best.pt")
    assert contiguous.action_net.conv1.weight.is_contiguous()
    torch.testing.assert_close(contiguous.action_net.conv1.weight, state["model"]["action_net.conv1.weight"])


@pytest.mark.parametrize("device,pinned", [(None, False), ("cpu", False), ("cuda", True), ("cuda:1", True)])
def test_loaders_pin_memory_only_when_they_feed_a_cuda_device(data_dir, tmp_path, monkeypatch, device, pinned):
    cfg = _cfg(data_dir)
    cache = open_data(cfg, data_dir.parent)
    target = None if device is None else torch.device(device)  # a CUDA device object needs no GPU
    for mode in ("train", "val"):
        assert make_loader(cfg, cache, "train", mode, shuffle=True, device=target).pin_memory is pinned, mode
    if device == "cpu":  # fit hands its loaders the device it trains on
        seen = []
        real = fit_module.make_loader

        def spy(*args, **kwargs):
            loader = real(*args, **kwargs)
            seen.append((kwargs.get("device"), loader.pin_memory))
            return loader

        monkeypatch.setattr(fit_module, "make_loader", spy)
        fit(_cfg(data_dir, "optim.steps=1"), cache, tmp_path / "run", progress=False, log=lambda *_: None)
        assert seen == [(torch.device("cpu"), False)] * 2


@pytest.mark.parametrize("device,non_blocking", [("cpu", False), ("cuda", True)])
def test_the_step_copies_a_batch_without_blocking_only_into_a_cuda_device(data_dir, monkeypatch, device, non_blocking):
    from flowaction.engine.step import forward_batch

    cfg = _cfg(data_dir, "model.input=frames", "augment.noise_std=0")
    cache = open_data(cfg, data_dir.parent)
    batch = next(iter(make_loader(cfg, cache, "train", "val")))
    model = build_model(cfg, len(cache.classes))
    copies = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if self is batch["frames"] or self is batch["label"]:
            target = torch.device(args[0] if args else kwargs["device"])
            copies.append((target.type, kwargs.get("non_blocking", False)))
            if target.type == "cuda":
                return self  # no GPU here: the "copy" stays where it is, the step runs on the CPU
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    forward_batch(model, batch, torch.device(device), cfg.loss)
    assert copies == [(device, non_blocking)] * 2  # the frames and the labels


@pytest.mark.parametrize("name,cuda,backend", [("cuda", True, "nccl"), ("auto", True, "nccl"), ("cpu", True, "gloo"),
                                               ("auto", False, "gloo")])
def test_a_process_group_takes_nccl_for_gpus_and_gloo_for_cpus(monkeypatch, name, cuda, backend):
    from flowaction.engine import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    joined, chosen = [], []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kwargs: joined.append(backend))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    context, device = distributed.setup(name)
    assert joined == [backend]
    expected = torch.device("cuda", 1) if backend == "nccl" else torch.device("cpu")
    assert device == expected and context.device == expected and (context.rank, context.world) == (1, 2)
    assert chosen == ([1] if backend == "nccl" else [])  # each process on the GPU of its local rank
