"""The hub exporter and ``recipe push``: the folder they upload, read as someone downloading it would.

There is no Hub here: ``huggingface_hub.HfApi`` is replaced by :class:`FakeHub`, which records the calls and keeps
a copy of the uploaded folder. Everything before the upload call (the folder, the card, the token handling) is real.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipetune import load_recipe_text
from recipetune.plugins import get_plugin_manager
from recipetune.runner import execute, prepare_run
from recipetune.testing import tiny_recipe_text

SECRET = "hf_TESTsecretTOKEN_0123456789"


class FakeHub:
    """Stands in for huggingface_hub.HfApi (no Hub on this machine): records calls, copies the uploaded folder."""

    calls: list[tuple[str, dict]] = []
    uploaded: Path | None = None

    def __init__(self, token=None, **kwargs):
        FakeHub.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, repo_type="model", private=None, exist_ok=False, **kwargs):
        FakeHub.calls.append(("create_repo", {"repo_id": repo_id, "private": private, "exist_ok": exist_ok}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type="model", commit_message=None, **kwargs):
        FakeHub.calls.append(("upload_folder", {"repo_id": repo_id, "commit_message": commit_message}))
        shutil.copytree(folder_path, FakeHub.uploaded)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    import huggingface_hub

    FakeHub.calls = []
    FakeHub.uploaded = tmp_path / "uploaded"
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setenv("RT_TEST_HUB_TOKEN", SECRET)
    return FakeHub


def _no_secret_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"the token is written in {path}"


@pytest.mark.slow
def test_hub_exporter_uploads_a_complete_private_folder_and_never_writes_the_token(tmp_path, tiny_model_dir,
                                                                                   sharegpt_file, fake_hub):
    exports = """
[[export]]
use = "lora"

[[export]]
use = "merged"
dtype = "float32"

[[export]]
use = "hub"
repo = "my-org/tiny-quill"
token_env = "RT_TEST_HUB_TOKEN"
"""
    pm = get_plugin_manager()
    recipe = load_recipe_text(tiny_recipe_text(tiny_model_dir, sharegpt_file, extra=exports), recipe_dir=tmp_path, pm=pm)
    run = prepare_run(recipe, pm, tmp_path / "run")
    execute(run)
    names = [c[0] for c in fake_hub.calls]
    assert names == ["init", "create_repo", "upload_folder"]
    assert fake_hub.calls[0][1]["token"] == SECRET  # handed to the client, and nowhere else
    assert fake_hub.calls[1][1] == {"repo_id": "my-org/tiny-quill", "private": True, "exist_ok": True}
    up = fake_hub.uploaded
    files = sorted(str(p.relative_to(up)) for p in up.rglob("*") if p.is_file())
    assert "config.json" in files and "model.safetensors" in files and "tokenizer.json" in files  # merged at the top
    assert "lora/adapter_config.json" in files and "lora/adapter_model.safetensors" in files
    assert "recipe.toml" in files and "README.md" in files
    card = (up / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "## Metrics" in card and "## Files in this repository" in card
    assert 'subfolder="lora"' in card and "## Recipe" in card
    assert json.loads((up / "lora" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    # read as a downloader would: the merged model and the adapter both load from the folder
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(up).config.model_type == "llama"
    assert AutoPeftModelForCausalLM.from_pretrained(up / "lora") is not None
    _no_secret_in(run.output_dir)
    _no_secret_in(up)


def test_push_a_run_folder_private_by_default_and_stage_only(tmp_path, fake_hub):
    from recipetune.cli import build_cli

    run = tmp_path / "run"
    adapter = run / "artifacts" / "lora"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "README.md").write_text("---\nbase_model: org/base\n---\n# card\n")
    gguf = run / "artifacts" / "gguf" / "model-q4_k_m.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    (run / "recipe.toml").write_text('name = "x"\n')
    (run / "resolved.json").write_text(json.dumps({"artifacts": [
        {"kind": "lora", "path": str(adapter)},
        {"kind": "gguf", "path": str(gguf), "verification": {"passed": True, "top1_agreement": 1.0, "prompts": []}}]}))
    runner = CliRunner()
    staged = tmp_path / "staged"
    out = runner.invoke(build_cli(), ["push", str(run), "--repo", "org/quill", "--stage-only", str(staged)])
    assert out.exit_code == 0, out.output
    assert fake_hub.calls == []  # nothing uploaded
    card = (staged / "README.md").read_text()
    assert (staged / "adapter_config.json").exists() and (staged / "gguf" / "model-q4_k_m.gguf").exists()
    assert "AutoPeftModelForCausalLM.from_pretrained(\"org/quill\")" in card
    assert "## GGUF checks" in card and "passed True" in card and "top1_agreement 1.0" in card
    out = runner.invoke(build_cli(), ["push", str(run), "--repo", "org/quill", "--token-env", "RT_TEST_HUB_TOKEN"])
    assert out.exit_code == 0, out.output
    assert ("create_repo", {"repo_id": "org/quill", "private": True, "exist_ok": True}) in fake_hub.calls
    assert SECRET not in out.output
    _no_secret_in(run)
    # no token: a clear error naming the variable, nothing uploaded
    fake_hub.calls.clear()
    out = runner.invoke(build_cli(), ["push", str(run), "--repo", "org/quill", "--token-env", "RT_NO_SUCH_TOKEN"])
    assert out.exit_code != 0 and "RT_NO_SUCH_TOKEN" in str(out.exception or out.output)
    assert fake_hub.calls == []
    out = runner.invoke(build_cli(), ["push", str(run), "--repo", "not a repo"])
    assert out.exit_code != 0 and "ORG/NAME" in str(out.exception or out.output)
