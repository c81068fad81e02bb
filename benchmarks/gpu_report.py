"""The report of ``bench_gpu.py``: the machine, the goals against what was measured, the Markdown
table, and atomic writes (a temporary file renamed into place, so a killed run leaves the last
complete file)."""
from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import torch

#: (index of the clip size, clips/s) of the joint model's training goals on an H100/H200-class GPU:
#: the run's first and second sizes (16 x 56 x 56 and 16 x 112 x 112 outside the smoke pass)
TRAINING_GOALS = ((0, 5000.0), (1, 1000.0))


def device_name(device: torch.device) -> str:
    """The GPU's name, else the CPU model that ``/proc/cpuinfo`` (or ``platform``) gives."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def slug(name: str) -> str:
    """A file-name form of a device name: ``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48] or "device"


def machine(device: torch.device) -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn, "python": platform.python_version(),
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0, "cpus": os.cpu_count(),
            # the float32 figures depend on these (PyTorch's defaults, as training runs)
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _best(rows: list[dict], **match) -> dict | None:
    fitting = [row for row in rows if row.get("status") == "ok" and row.get("clips_per_s")
               and all(row.get(key) == value for key, value in match.items())]
    return max(fitting, key=lambda row: row["clips_per_s"], default=None)


def _describe(row: dict) -> str:
    extra = [name for name, on in (("channels-last", row.get("channels_last")), ("compiled", row.get("compile"))) if on]
    return f"batch {row['batch']}" + (f" ({row['micro_batch']} x {row['accumulate']})" if row.get("accumulate", 1) > 1
                                      else "") + "".join(f", {word}" for word in extra)


def goals(result: dict) -> list[dict]:
    """Each goal as met, not met or not measured, with the figure it was judged on."""
    frames, sizes = result["shapes"]["frames"], result["shapes"]["sizes"]
    rows, loaders = result["throughput"], result["loader"]
    out = []
    for index, target in TRAINING_GOALS:
        if index >= len(sizes):
            continue
        size = sizes[index]
        best = _best(rows, model="learned", frames=frames, size=size, amp="bf16")
        measured = None if best is None else best["clips_per_s"]
        out.append({"goal": f"joint model training, {frames}x{size}x{size}, bf16, ResNet-{result['shapes']['depth']}",
                    "target": f">= {target:,.0f} clips/s", "measured": measured and round(measured, 1),
                    "how": best and _describe(best), "status": _status(measured, measured is not None
                                                                       and measured >= target)})
    for size in sizes:
        training = _best(rows, model="learned", frames=frames, size=size, amp="bf16") or _best(
            rows, model="learned", frames=frames, size=size)
        loader = _best(loaders, size=size)
        measured = None if training is None or loader is None else loader["clips_per_s"] / training["clips_per_s"]
        how = measured and (f"loader {loader['clips_per_s']:.0f} clips/s with {loader['workers']} workers / "
                            f"training {training['clips_per_s']:.0f} clips/s")
        out.append({"goal": f"the loader faster than joint training, {frames}x{size}x{size}",
                    "target": "loader clips/s > training clips/s", "measured": measured and round(measured, 2),
                    "how": how, "status": _status(measured, measured is not None and measured > 1)})
    return out


def _status(measured, met: bool) -> str:
    return "not measured" if measured is None else "met" if met else "not met"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value).replace("|", "/")


def _outcome(row: dict) -> str:
    return row["status"] + (f": {_cell(row['error'])}" if row.get("error") else "")


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# GPU check and throughput: {m['device_name']}", "",
             f"{result['date']}; torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}; device {m['device']}"
             f" ({m['gpus']} GPU(s) visible); budget {result['budget_s']:.0f} s, ran {result['elapsed_s']:.0f} s"
             + ("; smoke pass (tiny shapes: the figures mean nothing)" if result["smoke"] else "")
             + ("" if result["finished"] else "; NOT FINISHED (the figures so far)"), "",
             "## Checks", "", "| check | status | s | details / error |", "| --- | --- | --- | --- |"]
    for name, check in result["checks"].items():
        details = check.get("error") or ", ".join(f"{k} {_cell(v)}" for k, v in check.items()
                                                   if k not in ("status", "seconds", "error"))
        lines.append(f"| {name} | {check['status']} | {_cell(check.get('seconds'))} | {_cell(details)} |")
    lines += ["", "## Goals (on an H100/H200-class GPU)", "", "| goal | target | measured | status | how |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {g['goal']} | {g['target']} | {_cell(g['measured'])} | {g['status']} | {_cell(g['how'])} |"
              for g in result["goals"]]
    lines += ["", "## Training throughput", "",
              "| model | T x H x W | batch | accumulate | precision | channels-last | compiled | clips/s | "
              "median step s | peak GiB | status |", "|" + " --- |" * 11]
    for r in result["throughput"]:
        lines.append(f"| {'joint' if r['model'] == 'learned' else 'frames'} | {r['shape']} | {r['batch']} | "
                     f"{_cell(r.get('accumulate'))} | {'bf16' if r['amp'] == 'bf16' else 'float32'} | "
                     f"{'on' if r['channels_last'] else 'off'} | {'on' if r['compile'] else 'off'} | "
                     f"{_cell(r.get('clips_per_s'))} | {_cell(r.get('median_step_s'))} | "
                     f"{_cell(r.get('peak_memory_gib'))} | {_outcome(r)} |")
    lines += ["", "## Loader", "", "| T x H x W | workers | batch | pinned | clips/s | first batch s | status |",
              "|" + " --- |" * 7]
    for r in result["loader"]:
        lines.append(f"| {r.get('shape', '-')} | {r['workers']} | {r.get('batch', '-')} | "
                     f"{_cell(r.get('pin_memory'))} | {_cell(r.get('clips_per_s'))} | "
                     f"{_cell(r.get('first_batch_s'))} | {_outcome(r)} |")
    if result["skipped"]:
        lines += ["", f"Not run (the budget): {', '.join(result['skipped'])}."]
    return "\n".join(lines) + "\n"


def write_report(result: dict, json_path: Path) -> None:
    """The JSON and, beside it, the Markdown table (both replaced atomically)."""
    write_atomic(json_path, json.dumps(result, indent=1, default=str))
    write_atomic(json_path.with_suffix(".md"), markdown(result))
