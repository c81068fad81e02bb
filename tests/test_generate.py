"""The generated cache is written, reused, regenerated when stale, and never deletes foreign files."""
import json

import pytest

from flowaction.cli import main
from flowaction.data.generate import synthetic_cache
from flowaction.data.synthetic import SyntheticSpec

SPEC = SyntheticSpec(size=24, num_frames=6, num_classes=2)
COUNTS = {"train": 2, "val": 1, "test": 1}


def test_reused_when_same_and_regenerated_when_stale(tmp_path):
    cache = synthetic_cache(tmp_path / "data", SPEC, COUNTS, seed=0, progress=False)
    assert len(cache.videos) == 8
    index = tmp_path / "data" / "index.json"
    stamp = index.stat().st_mtime_ns
    synthetic_cache(tmp_path / "data", SPEC, COUNTS, seed=0, progress=False)
    assert index.stat().st_mtime_ns == stamp  # reused, not rewritten
    cache = synthetic_cache(tmp_path / "data", SPEC, {"train": 3, "val": 1, "test": 1}, seed=0, progress=False)
    assert len(cache.videos) == 10
    assert json.loads(index.read_text())["meta"]["clips_per_class"]["train"] == 3


def test_unfinished_generation_is_replaced(tmp_path):
    synthetic_cache(tmp_path / "data", SPEC, COUNTS, seed=0, progress=False)
    (tmp_path / "data" / "index.json").unlink()  # as if killed before the index was written
    (tmp_path / "data" / "shards" / "train-00000.frames.tmp.npy").write_bytes(b"partial")
    cache = synthetic_cache(tmp_path / "data", SPEC, COUNTS, seed=0, progress=False)
    assert len(cache.videos) == 8
    assert not (tmp_path / "data" / "shards" / "train-00000.frames.tmp.npy").exists()


@pytest.mark.parametrize("foreign", ["results.csv", "shards/notes.txt", "index.json"])
def test_foreign_files_are_never_deleted(tmp_path, foreign):
    data = tmp_path / "data"
    synthetic_cache(data, SPEC, COUNTS, seed=0, progress=False)
    (data / "index.json").unlink()
    path = data / foreign
    path.write_text("a user's file")
    with pytest.raises(FileExistsError, match="did not write"):
        synthetic_cache(data, SPEC, COUNTS, seed=0, progress=False)
    assert path.read_text() == "a user's file"
    assert (data / "shards" / "train-00000.frames.npy").is_file()  # nothing else was removed either


def test_demo_refuses_a_data_folder_with_user_files(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "data").mkdir(parents=True)
    (out / "data" / "results.csv").write_text("a,b\n1,2\n")
    assert main(["demo", "--preset", "tiny", "--out", str(out)]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (out / "data" / "results.csv").read_text() == "a,b\n1,2\n"


def test_synthetic_dir_override_refuses_any_folder_with_user_files(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    code = main(["train", "--out", str(tmp_path / "run"), f"data.synthetic_dir={folder}", "optim.epochs=1"])
    assert code == 2 and "nothing was deleted" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "keep me"
