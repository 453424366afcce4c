"""Guards: a diverged loss, an out-of-memory error and a full disk end with a clear message and lose nothing."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from recipetune import atomic, checkpoints, load_recipe_text
from recipetune.plugins import get_plugin_manager
from recipetune.problems import StageError, UserError
from recipetune.runner import execute, prepare_run
from recipetune.testing import tiny_recipe_text


def run_tiny(tmp_path, model_dir, data, out, overrides):
    pm = get_plugin_manager()
    recipe = load_recipe_text(tiny_recipe_text(model_dir, data), recipe_dir=tmp_path, overrides=list(overrides), pm=pm)
    return execute(prepare_run(recipe, pm, out))


def failure(tmp_path, model_dir, data, overrides) -> tuple[Path, UserError]:
    out = tmp_path / "run"
    with pytest.raises(StageError) as info:
        run_tiny(tmp_path, model_dir, data, out, overrides)
    assert info.value.stage == "train"
    assert isinstance(info.value.cause, UserError), info.value.cause  # the CLI prints it as one line, no traceback
    return out, info.value.cause


@pytest.mark.slow
def test_a_huge_learning_rate_stops_at_the_nan_with_step_checkpoint_and_hints(tmp_path, tiny_model_dir, sharegpt_file):
    # a real divergence: no injected value; the loss of this tiny model becomes NaN within 8 steps at lr 1e6
    out, error = failure(tmp_path, tiny_model_dir, sharegpt_file,
                         ["train.max_steps=8", "train.save_steps=2", "train.learning_rate=1e6"])
    message = str(error)
    nan_step = next(int(row["step"]) for row in map(__import__("json").loads, (out / "metrics.jsonl").read_text().splitlines())
                    if row.get("loss") != row.get("loss"))
    assert f"loss is nan at step {nan_step}" in message
    last = checkpoints.newest_complete(out / "checkpoints")
    assert last is not None and checkpoints.checkpoint_step(last) < nan_step
    assert f"The last complete checkpoint is {last}" in message
    assert "train.learning_rate (now 1e+06" in message and "train.precision" in message
    assert not (out / "checkpoints" / f"checkpoint-{nan_step}").exists(), "no checkpoint of broken weights"


@pytest.mark.slow
def test_out_of_memory_names_the_fixes_and_the_plan(tmp_path, tiny_model_dir, sharegpt_file, monkeypatch):
    # No GPU here: the training step is mocked to raise the error CUDA raises (torch.OutOfMemoryError) at step 3.
    import torch
    from transformers import Trainer

    real_step = Trainer.training_step

    def step(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.6 GiB total)")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", step)
    out, error = failure(tmp_path, tiny_model_dir, sharegpt_file,
                         ["train.max_steps=4", "train.save_steps=2", "train.per_device_train_batch_size=4",
                          "train.gradient_accumulation_steps=1"])
    message = str(error)
    assert message.startswith("out of memory on the GPU at step 3 (CUDA out of memory. Tried to allocate 2.00 GiB")
    for fix in ("train.per_device_train_batch_size=2 with train.gradient_accumulation_steps=2",
                "adapt.gradient_checkpointing=true", "load.load_in_4bit=true", "load.max_seq_length=64"):
        assert fix in message
    assert "recipe plan estimated" in message and "training needs roughly" in message
    assert f"The last complete checkpoint is {out / 'checkpoints' / 'checkpoint-2'}" in message


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_one(tmp_path, tiny_model_dir, sharegpt_file, monkeypatch):
    # The disk fills while checkpoint-4 is half written (its adapter is on disk, the optimizer write fails).
    from transformers import Trainer

    real_save = Trainer._save_optimizer_and_scheduler

    def save(self, output_dir):
        if self.state.global_step == 4:
            Path(output_dir, "optimizer.pt").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir, "optimizer.pt")))
        return real_save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save)
    out, error = failure(tmp_path, tiny_model_dir, sharegpt_file, ["train.max_steps=6", "train.save_steps=2"])
    root = out / "checkpoints"
    assert [p.name for p in checkpoints.checkpoint_folders(root)] == ["checkpoint-2"]
    assert checkpoints.is_complete(root / "checkpoint-2")
    message = str(error)
    assert message.startswith("the disk is full ([Errno 28] No space left on device")
    assert "The incomplete checkpoint-4 was removed. Nothing written before was lost." in message
    assert f"The last complete checkpoint is {root / 'checkpoint-2'}" in message


def test_a_full_disk_while_writing_a_file_or_folder_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("the earlier report\n")
    real_write = Path.write_bytes

    def half_then_full(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(OSError):
        atomic.write_text(target, "a new report that does not fit\n" * 100)
    monkeypatch.undo()
    assert target.read_text() == "the earlier report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"], "no temporary file left behind"

    folder = tmp_path / "artifacts" / "lora"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"earlier adapter")
    with pytest.raises(OSError):
        with atomic.atomic_dir(folder) as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"new, half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (folder / "adapter_model.safetensors").read_bytes() == b"earlier adapter"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["lora"]


def test_checkpoint_completeness_and_retention(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x" * step)
        (folder / "optimizer.pt").write_bytes(b"y")
        if step != 6:
            checkpoints.mark_complete(folder, step)
    assert [p.name for p in checkpoints.complete_checkpoints(root)] == ["checkpoint-2", "checkpoint-4"]
    (root / "checkpoint-4" / "optimizer.pt").unlink()  # a deletion killed half-way: the manifest no longer holds
    assert checkpoints.newest_complete(root).name == "checkpoint-2"
    (root / "checkpoint-2" / "optimizer.pt").write_bytes(b"yy")  # a file rewritten after the manifest
    assert checkpoints.newest_complete(root) is None
    assert [p.name for p in checkpoints.discard_incomplete(root)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for step in (2, 4, 6, 8):
        folder = root / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        checkpoints.mark_complete(folder, step)
    removed = checkpoints.rotate(root, keep=2, protect=(root / "checkpoint-2",))
    assert [p.name for p in removed] == ["checkpoint-4", "checkpoint-6"]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-8"]
    (root / ".deleting-checkpoint-6").mkdir()  # a deletion killed after its rename
    checkpoints.discard_incomplete(root)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-8"]


def test_checkpoints_of_a_recipetune_without_manifests_still_resume(tmp_path):
    root = tmp_path / "checkpoints"
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, '{"global_st')):
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        (folder / "trainer_state.json").write_text(state)  # written last by transformers; 6 was cut by a kill
    (root / "checkpoint-8").mkdir()  # killed before its trainer_state.json
    assert checkpoints.newest_complete(root).name == "checkpoint-4"
    assert [p.name for p in checkpoints.discard_incomplete(root)] == ["checkpoint-6", "checkpoint-8"]
