"""Per-epoch metrics to CSV and TensorBoard."""
from __future__ import annotations

import csv
from pathlib import Path


class RunLogger:
    """Appends one CSV row per (epoch, split) and mirrors scalars to TensorBoard.

    The CSV keeps every column ever seen (a resumed run appends to the same file).
    """

    def __init__(self, out_dir: str | Path, tensorboard: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.csv_path = self.out_dir / "metrics.csv"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self.writer = None

    def log(self, epoch: int, split: str, metrics: dict[str, float | None]) -> None:
        row = {"epoch": epoch, "split": split, **{k: v for k, v in metrics.items() if v is not None}}
        rows = []
        if self.csv_path.is_file():
            with open(self.csv_path) as handle:
                rows = [r for r in csv.DictReader(handle) if not (r["epoch"] == str(epoch) and r["split"] == split)]
        rows.append({k: str(v) for k, v in row.items()})
        columns = ["epoch", "split"] + sorted({k for r in rows for k in r} - {"epoch", "split"})
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.csv_path)
        if self.writer is not None:
            for key, value in metrics.items():
                if value is not None:
                    self.writer.add_scalar(f"{split}/{key}", value, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
