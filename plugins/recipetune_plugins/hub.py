"""Exporter ``hub`` and ``recipe push RUN --repo ORG/NAME``: a run's adapter, merged model and GGUF files on the Hub.

Both build one folder (:func:`stage_folder`) and upload it with ``huggingface_hub`` (``create_repo`` private by
default, then ``upload_folder``). The folder is what someone downloading the repository gets:

- at the top, the merged model when it is uploaded (``AutoModelForCausalLM.from_pretrained("org/name")``), else the
  adapter (``AutoPeftModelForCausalLM.from_pretrained("org/name")``);
- ``lora/`` (the adapter, when the merged model is at the top) and ``gguf/`` (GGUF files, the Ollama Modelfile);
- ``README.md``: the model card the exporters wrote (:mod:`.model_card`: base model, data, recipe, metrics, how to
  load) with the files of the repository and the GGUF check results added; ``recipe.toml``.

The token is read from the environment variable the recipe (or ``--token-env``) names, handed to ``HfApi`` and
nowhere else: it is never logged, never written to the run folder or the uploaded folder.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import Field, field_validator

from recipetune import Artifact, Exporter, Options, Problem, UserError, hookimpl
from recipetune.atomic import write_text

KINDS = ("merged", "lora", "gguf")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Upload:
    """One artifact to upload: its kind, where it is, and what its exporter recorded."""

    kind: str
    path: Path
    details: dict[str, Any] = field(default_factory=dict)
    report: str = ""


def _check_repo(value: str) -> str:
    if not REPO_ID.match(value):
        raise ValueError(f"{value!r} is not a Hub repository id; expected ORG/NAME (e.g. my-org/quill-dpo)")
    return value


class HubOptions(Options):
    repo: str
    """The Hub repository, ``ORG/NAME`` (created when missing)."""
    private: bool = True
    """Create the repository private (an existing repository keeps its visibility)."""
    token_env: str = "HF_TOKEN"
    """Name of the environment variable holding a Hub token with write access (the token itself is never written)."""
    include: list[Literal["merged", "lora", "gguf"]] = Field(default_factory=lambda: list(KINDS))
    """Which of the run's artifacts to upload (those the run wrote; at least one must exist)."""
    commit_message: str | None = None
    """Commit message (default: "recipetune: <run name>")."""

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str) -> str:
        return _check_repo(value)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same disk: no second copy of a merged model
    except OSError:
        shutil.copy2(src, dst)


def _copy_tree(src: Path, dst: Path) -> list[str]:
    out = []
    for path in sorted(src.rglob("*")):
        if path.is_file():
            rel = path.relative_to(src)
            _link_or_copy(path, dst / rel)
            out.append(str(rel))
    return out


def gguf_lines(upload: Upload) -> list[str]:
    """The GGUF file's check against transformers, as its exporter reported it."""
    name = upload.path.name
    if upload.report:
        return [f"- `gguf/{name}`", *[f"  {line}" for line in upload.report.splitlines()]]
    check = upload.details.get("verification")
    if not check:
        return [f"- `gguf/{name}`: not checked against transformers"]
    shown = {k: v for k, v in check.items() if not isinstance(v, (list, dict))}
    return [f"- `gguf/{name}`: check " + ", ".join(f"{k} {v}" for k, v in shown.items())]


def stage_folder(uploads: list[Upload], recipe_text: str, destination: Path, repo: str) -> Path:
    """Write the folder to upload into ``destination`` (empty or missing) and return it."""
    kinds = {u.kind for u in uploads}
    if not kinds & set(KINDS):
        raise UserError("nothing to upload: the run wrote no merged model, LoRA adapter or GGUF file "
                        "(add [[export]] tables before the hub exporter, or run recipe export first)")
    destination.mkdir(parents=True, exist_ok=True)
    if any(destination.iterdir()):
        raise UserError(f"{destination} is not empty")
    top = "merged" if "merged" in kinds else "lora" if "lora" in kinds else None
    files: list[str] = []
    card = ""
    for u in uploads:
        if u.kind in ("merged", "lora") and u.path.is_dir():
            where = "" if u.kind == top else f"{u.kind}/"
            copied = _copy_tree(u.path, destination / where)
            files += [where + f for f in copied]
            if u.kind == top and (u.path / "README.md").exists():
                card = (u.path / "README.md").read_text(encoding="utf-8")
        elif u.kind in ("gguf", "modelfile") and u.path.is_file():
            _link_or_copy(u.path, destination / "gguf" / u.path.name)
            files.append(f"gguf/{u.path.name}")
    if not card:
        card = f"# {repo}\n\nMade by recipetune.\n"
    lines = [card.rstrip(), "", "## Files in this repository", ""]
    if top == "merged":
        lines.append("- the merged model at the top (transformers `from_pretrained(\"" + repo + "\")`)")
    elif top == "lora":
        lines.append("- the LoRA adapter at the top (peft `AutoPeftModelForCausalLM.from_pretrained(\"" + repo + "\")`)")
    if "lora" in kinds and top != "lora":
        lines.append(f"- `lora/`: the LoRA adapter (`AutoPeftModelForCausalLM.from_pretrained(\"{repo}\", subfolder=\"lora\")`)")
    ggufs = [u for u in uploads if u.kind == "gguf"]
    if ggufs:
        lines += ["- `gguf/`: GGUF files for llama.cpp / Ollama "
                  f"(`huggingface-cli download {repo} --include 'gguf/*'`)", "", "## GGUF checks", ""]
        for u in ggufs:
            lines += gguf_lines(u)
    lines.append("")
    write_text(destination / "README.md", "\n".join(lines))
    if recipe_text:
        write_text(destination / "recipe.toml", recipe_text)
    return destination


def read_token(token_env: str) -> str:
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise UserError(f"no Hub token: the environment variable {token_env} is not set (export {token_env}=hf_... with "
                        "a token that may write to the repository; it is read from there only, never written)")
    return token


def upload(folder: Path, repo: str, private: bool, token: str, message: str) -> str:
    """Create the repository (private by default) and upload ``folder``; returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", commit_message=message)
    return str(url)


def _choose(artifacts: list[Upload], include: list[str]) -> list[Upload]:
    wanted = set(include) | ({"modelfile"} if "gguf" in include else set())
    return [a for a in artifacts if a.kind in wanted]


class HubExporter(Exporter):
    """Uploads the artifacts the exporters before it wrote (adapter, merged, GGUF) to a Hub repository."""

    name = "hub"
    Options = HubOptions

    def check(self, recipe):
        index = next(i for i, s in enumerate(recipe.export) if s.component is self)
        if index != len(recipe.export) - 1:
            yield Problem(f"export[{index}].use", "the hub exporter uploads what the exporters before it wrote: put it "
                          "last in the [[export]] list")
        before = {s.use for s in recipe.export[:index]}
        if not before & set(self.options.include):
            yield Problem(f"export[{index}].include", f"none of {self.options.include} is exported before the hub "
                          f"exporter (exporters before it: {', '.join(sorted(before)) or 'none'})")

    def preflight(self, recipe):
        if not os.environ.get(self.options.token_env, "").strip():
            index = next(i for i, s in enumerate(recipe.export) if s.component is self)
            yield Problem(f"export[{index}].token_env", f"the environment variable {self.options.token_env} holding "
                          "a Hub token is not set")

    def describe_plan(self, recipe):
        o = self.options
        return [f"upload {', '.join(o.include)} to {o.repo} ({'private' if o.private else 'public'})"]

    def export(self, run, loaded, result):
        o = self.options
        token = read_token(o.token_env)
        uploads = _choose([Upload(a.kind, a.path, dict(a.details), a.report) for a in run.artifacts], o.include)
        folder = stage_folder(uploads, run.recipe.text, run.artifacts_dir / "hub", o.repo)
        url = upload(folder, o.repo, o.private, token, o.commit_message or f"recipetune: {run.recipe.name}")
        run.logger.info("hub: uploaded %s to %s (%s)", ", ".join(sorted({u.kind for u in uploads})), url,
                        "private" if o.private else "public")
        return [Artifact("hub", folder, f"uploaded to {url}", {"repo": o.repo, "url": url, "private": o.private})]


def run_uploads(folder: Path) -> tuple[list[Upload], str]:
    """A finished run's artifacts (from ``resolved.json``) and its recipe text."""
    from .finished_run import open_run

    done = open_run(folder)
    uploads = []
    for entry in done.artifacts:
        details = {k: v for k, v in entry.items() if k not in ("kind", "path")}
        uploads.append(Upload(entry.get("kind", ""), Path(entry.get("path", "")), details))
    recipe = done.folder / "recipe.toml"
    return uploads, recipe.read_text(encoding="utf-8") if recipe.exists() else ""


@hookimpl
def register_exporters(register):
    register(HubExporter)


@hookimpl
def register_commands(cli):
    @cli.command("push")
    @click.argument("run_folder", metavar="RUN", type=click.Path(exists=True, file_okay=False))
    @click.option("--repo", required=True, help="Hub repository ORG/NAME (created when missing).")
    @click.option("--public", is_flag=True, help="Create the repository public (default: private).")
    @click.option("--include", default=",".join(KINDS), show_default=True,
                  help="Comma-separated artifacts to upload: merged, lora, gguf.")
    @click.option("--token-env", default="HF_TOKEN", show_default=True,
                  help="Environment variable holding the Hub token (never written anywhere).")
    @click.option("--stage-only", type=click.Path(file_okay=False),
                  help="Write the folder that would be uploaded here and upload nothing.")
    def push(run_folder: str, repo: str, public: bool, include: str, token_env: str, stage_only: str | None) -> None:
        """Upload RUN's adapter, merged model and GGUF files to the Hugging Face Hub, with a model card."""
        import tempfile

        try:
            _check_repo(repo)
        except ValueError as exc:
            raise UserError(f"--repo: {exc}") from None
        kinds = [k.strip() for k in include.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise UserError(f"--include {include!r}: expected a comma-separated list of {', '.join(KINDS)}")
        uploads, recipe_text = run_uploads(Path(run_folder))
        uploads = _choose(uploads, kinds)
        if stage_only:
            folder = stage_folder(uploads, recipe_text, Path(stage_only), repo)
            click.echo(f"staged {len(list(folder.rglob('*')))} files in {folder} (nothing uploaded)")
            return
        token = read_token(token_env)
        with tempfile.TemporaryDirectory(prefix="recipetune-push-") as tmp:
            folder = stage_folder(uploads, recipe_text, Path(tmp) / "upload", repo)
            url = upload(folder, repo, not public, token, f"recipetune: {Path(run_folder).name}")
        click.echo(f"uploaded {', '.join(sorted({u.kind for u in uploads}))} to {url} "
                   f"({'public' if public else 'private'})")
