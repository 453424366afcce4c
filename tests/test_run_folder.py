"""Opening a run folder (issue 15.7): a new run, a resumed one, or --fresh — never two runs mixed in one folder."""

from __future__ import annotations

import json

import pytest

from recipetune import checkpoints, load_recipe_text
from recipetune.problems import UserError
from recipetune.runner import prepare_run
from recipetune.testing import tiny_recipe_text


@pytest.fixture
def make_recipe(tmp_path, recipetune_pm, tiny_model_dir, sharegpt_file):
    def _make(*overrides):
        return load_recipe_text(tiny_recipe_text(tiny_model_dir, sharegpt_file), recipe_dir=tmp_path,
                                overrides=list(overrides), pm=recipetune_pm)

    return _make


def earlier_run(folder, recipe, finished=False, checkpoint_steps=(2,), metric_steps=(1, 2, 3)):
    """A run folder as an earlier ``recipe run`` leaves it (killed during step 4, or finished)."""
    folder.mkdir(parents=True)
    (folder / "recipe.toml").write_text(recipe.text)
    (folder / "run.log").write_text("earlier run\n")
    (folder / "resolved.json").write_text(json.dumps({"recipe": recipe.resolved(), **({"finished": True} if finished else {})}))
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in metric_steps]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')  # the last line cut by the kill
    for step in checkpoint_steps:
        ckpt = folder / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
        checkpoints.mark_complete(ckpt, step)
    half = folder / "checkpoints" / "checkpoint-4"  # being written when the process died
    half.mkdir(parents=True)
    (half / "adapter_model.safetensors").write_bytes(b"half")
    return folder


def test_a_new_or_empty_folder_starts_a_new_run(tmp_path, make_recipe, recipetune_pm):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "new", tmp_path / "empty"):
        run = prepare_run(make_recipe(), recipetune_pm, folder)
        assert not run.resume and run.resume_from is None and (folder / "recipe.toml").exists()


def test_an_unfinished_run_of_the_same_recipe_resumes_from_its_newest_complete_checkpoint(tmp_path, make_recipe,
                                                                                           recipetune_pm):
    recipe = make_recipe()
    folder = earlier_run(tmp_path / "run", recipe)
    run = prepare_run(recipe, recipetune_pm, folder)
    assert run.resume and run.resume_from == (folder / "checkpoints" / "checkpoint-2").resolve()
    assert not (folder / "checkpoints" / "checkpoint-4").exists(), "the half-written checkpoint is removed"
    assert [json.loads(l)["step"] for l in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    notes = " | ".join(run.state["run_folder_notes"])
    assert "removed incomplete checkpoint(s) (the run stopped while writing them): checkpoint-4" in notes
    assert "from checkpoint-2 (step 2); dropped 2 metric line(s) past step 2" in notes
    assert "earlier run" in (folder / "run.log").read_text(), "the same run's log goes on"


def test_a_finished_run_or_another_recipe_is_refused_and_left_untouched(tmp_path, make_recipe, recipetune_pm):
    recipe = make_recipe()
    finished = earlier_run(tmp_path / "finished", recipe, finished=True)
    before = (finished / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="holds a finished run .*--fresh.*--resume"):
        prepare_run(recipe, recipetune_pm, finished)
    other = earlier_run(tmp_path / "other", recipe)
    with pytest.raises(UserError, match=r"a different recipe: train.learning_rate \(0.001 -> 0.005\)"):
        prepare_run(make_recipe("train.learning_rate=5e-3"), recipetune_pm, other)
    for folder in (finished, other):
        assert (folder / "metrics.jsonl").read_text() == before
        assert (folder / "checkpoints" / "checkpoint-4").exists()
    # --resume continues either on purpose
    run = prepare_run(make_recipe("train.learning_rate=5e-3"), recipetune_pm, other, resume=True)
    assert run.resume_from.name == "checkpoint-2"
    assert any("--resume with a changed recipe: train.learning_rate" in n for n in run.state["run_folder_notes"])


def test_fresh_removes_the_earlier_run_and_says_what(tmp_path, make_recipe, recipetune_pm):
    recipe = make_recipe()
    folder = earlier_run(tmp_path / "run", recipe, finished=True)
    (folder / "artifacts").mkdir()
    run = prepare_run(recipe, recipetune_pm, folder, fresh=True)
    assert not run.resume and not (folder / "metrics.jsonl").exists() and not (folder / "checkpoints").exists()
    note = run.state["run_folder_notes"][0]
    assert note.startswith(f"--fresh: removed the earlier run in {folder}: ")
    for name in ("artifacts/", "checkpoints/", "metrics.jsonl", "resolved.json"):
        assert name in note
    with pytest.raises(UserError, match="contradict"):
        prepare_run(recipe, recipetune_pm, folder, resume=True, fresh=True)


def test_a_folder_that_is_not_a_run_folder_is_never_written_or_deleted(tmp_path, make_recipe, recipetune_pm):
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    for flags in ({}, {"fresh": True}, {"resume": True}):
        with pytest.raises(UserError, match="is not empty and is not a run folder .*thesis.tex"):
            prepare_run(make_recipe(), recipetune_pm, folder, **flags)
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_cli_refuses_a_used_folder_in_one_line_and_keeps_it(cli, tmp_path, make_recipe):
    recipe = make_recipe()
    folder = earlier_run(tmp_path / "run", recipe, finished=True)
    path = tmp_path / "r.toml"
    path.write_text(recipe.text)
    result = cli("run", str(path), "--output-dir", str(folder))
    assert result.returncode == 2, result.stderr
    assert "error: " in result.stderr and "holds a finished run" in result.stderr and "Traceback" not in result.stderr
    assert (folder / "metrics.jsonl").exists()


def test_an_option_added_by_a_newer_recipetune_is_not_another_recipe(tmp_path, make_recipe, recipetune_pm):
    recipe = make_recipe()
    folder = earlier_run(tmp_path / "run", recipe)
    document = json.loads((folder / "resolved.json").read_text())
    del document["recipe"]["train"]["max_grad_norm"]  # as written by a version without that option
    (folder / "resolved.json").write_text(json.dumps(document))
    run = prepare_run(recipe, recipetune_pm, folder)
    assert run.resume_from.name == "checkpoint-2"
    assert any("options only one of the two recipes has" in n and "train.max_grad_norm" in n
               for n in run.state["run_folder_notes"])
