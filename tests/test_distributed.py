"""Several processes on a CPU: real workers started by torch.distributed.run, gloo, the tiny model.

Tolerance: a 2-process run and a 1-process run of the same global batch (4 = 2 per device x 2 processes x 1
accumulation = 2 per device x 1 process x 2 accumulation) see the same samples per step; their losses and grad
norms agree to 1e-5 (relative) and their final LoRA weights to 1e-6 (absolute): only the order of float sums
differs (gloo's all-reduce against the accumulation of one process). Measured: equal to 6 decimals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli

RECIPE = """
name = "dist"
seed = 7

[load]
use = "hf"
model = "{model}"
max_seq_length = 128

[adapt]
use = "lora"
r = 4
alpha = 8
target_modules = ["q_proj", "v_proj"]
gradient_checkpointing = false

[format]
dataset = "{data}"

[train]
use = "sft"
max_steps = 4
per_device_train_batch_size = 2
global_batch_size = 4
warmup_steps = 0
learning_rate = 1e-3
optim = "adamw_torch"
packing = false
save_steps = 2
save_total_limit = 3

[[export]]
use = "lora"
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model_dir):
    """The recipe, a data file and a private data cache (so the format stage really runs once here)."""
    from recipetune.testing import write_sharegpt

    root = tmp_path_factory.mktemp("dist")
    data = write_sharegpt(root / "chat.jsonl", rows=32)
    recipe = root / "dist.toml"
    recipe.write_text(RECIPE.format(model=tiny_model_dir, data=data))
    env = {"RECIPETUNE_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    return root, recipe, env


def losses(folder: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows if "loss" in r]


def lora_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def assert_same_training(a: list, b: list) -> None:
    assert [s for s, *_ in a] == [s for s, *_ in b]
    for (step, loss_a, norm_a), (_, loss_b, norm_b) in zip(a, b):
        assert loss_a == pytest.approx(loss_b, rel=1e-5), step
        assert norm_a == pytest.approx(norm_b, rel=1e-5), step


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-6, name


@pytest.fixture(scope="module")
def one_process(job):
    """The same recipe in this process (as before: no launcher, no process group)."""
    from recipetune import load_recipe
    from recipetune.plugins import get_plugin_manager
    from recipetune.runner import execute, prepare_run

    root, recipe, env = job
    pm = get_plugin_manager()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return execute(prepare_run(load_recipe(recipe, pm=pm), pm, root / "one")).output_dir


@pytest.fixture(scope="module")
def two_processes(job):
    root, recipe, env = job
    out = root / "two"
    env = {**env, "RECIPETUNE_CACHE": str(root / "cache-of-two")}  # empty: rank 0 formats, rank 1 reads its cache
    done = run_cli("run", str(recipe), "--nproc-per-node", "2", "--output-dir", str(out), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.mark.slow
def test_two_processes_train_like_one_process_at_the_same_global_batch(one_process, two_processes):
    two, done = two_processes
    assert_same_training(losses(two), losses(one_process))
    assert_same_weights(lora_weights(two / "artifacts" / "lora"), lora_weights(one_process / "artifacts" / "lora"))
    assert "through torch.distributed.run" in done.stderr

    job = json.loads((two / "resolved.json").read_text())["distributed"]
    assert (job["world_size"], job["strategy"], job["backend"]) == (2, "ddp", "gloo")
    assert [r["rank"] for r in job["ranks"]] == [0, 1] and all(r["device"] == "cpu" for r in job["ranks"])
    assert (job["per_device_batch"], job["accumulation"], job["effective_batch"]) == (2, 1, 4)
    assert job["tokens_per_second"] > 0 and job["tokens_per_second_per_gpu"] == pytest.approx(job["tokens_per_second"] / 2, rel=0.01)
    report = (two / "report.md").read_text()
    assert "## Processes" in report and "2 per device x 1 accumulation x 2 processes = 4" in report
    assert "## Processes" not in (one_process / "report.md").read_text()  # one process: the report as before
    assert "distributed" not in json.loads((one_process / "resolved.json").read_text())

    # one run folder, written by rank 0: each step once in metrics.jsonl, rank 1 only has its log
    assert [s for s, *_ in losses(two)] == [1, 2, 3, 4]
    assert sorted(p.name for p in two.glob("run*.log")) == ["run.log", "run.rank1.log"]
    # the format stage ran once: rank 0 filled the cache, rank 1 read it
    assert "cache miss" in (two / "run.log").read_text()
    assert "cache hit" in (two / "run.rank1.log").read_text()


@pytest.mark.slow
def test_two_node_launch_on_localhost_resumes_a_two_process_run(job, two_processes, tmp_path):
    """Two launcher agents (--nnodes 2, static rendezvous on 127.0.0.1), one process each, continue the
    2-process run from its step-2 checkpoint and end where it ended."""
    _, recipe, env = job
    two, _ = two_processes
    out = tmp_path / "resumed"
    shutil.copytree(two, out)
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(out / "artifacts")
    port = _free_port()
    common = [sys.executable, "-m", "recipetune", "run", str(recipe), "--resume", "--output-dir", str(out),
              "--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    node1 = subprocess.Popen([*common, "--node-rank", "1"], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        node0 = subprocess.run([*common, "--node-rank", "0"], env=full_env, capture_output=True, text=True, timeout=400)
        _, node1_err = node1.communicate(timeout=60)
    finally:
        node1.kill()
    assert node0.returncode == 0, node0.stderr[-3000:]
    assert node1.returncode == 0, node1_err[-3000:]
    assert "from checkpoint-2" in node0.stderr
    assert_same_training(losses(out), losses(two))
    assert_same_weights(lora_weights(out / "artifacts" / "lora"), lora_weights(two / "artifacts" / "lora"))
    job_doc = json.loads((out / "resolved.json").read_text())["distributed"]
    assert (job_doc["world_size"], job_doc["nodes"]) == (2, 2)


FAILING_PLUGIN = '''
import os
from recipetune import hookimpl

@hookimpl(tryfirst=True)
def train_model(run, loaded, dataset):
    if run.rank == int(os.environ["RECIPETUNE_TEST_FAIL_RANK"]):
        raise RuntimeError(f"rank {run.rank} broke on purpose")
'''


@pytest.mark.slow
def test_a_rank_that_raises_ends_every_rank_within_seconds_with_its_error(job, tmp_path):
    """Rank 1 raises as training starts (a plugin installed through an entry point, as a user's would be),
    while rank 0 trains and waits on it in the first all-reduce: the launcher ends the job with rank 1's error."""
    _, recipe, env = job
    site = tmp_path / "site"
    info = site / "recipetune_test_failing-0.0.dist-info"
    info.mkdir(parents=True)
    (site / "failing_rank.py").write_text(FAILING_PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: recipetune-test-failing\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[recipetune]\nfailing_rank = failing_rank\n")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env, "RECIPETUNE_TEST_FAIL_RANK": "1",
                "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "recipetune", "run", str(recipe), "--nproc-per-node", "2",
                             "--output-dir", str(tmp_path / "out")],
                            env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    failed_at, lines = None, []
    try:
        for line in proc.stderr:
            lines.append(line)
            if failed_at is None and "broke on purpose" in line:
                failed_at = time.monotonic()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    ended = time.monotonic()
    stderr = "".join(lines)
    assert failed_at is not None, stderr[-3000:]
    assert proc.returncode == 1, stderr[-3000:]
    assert ended - failed_at < 20, f"the job took {ended - failed_at:.0f} s to end after rank 1 failed"
    assert "error: rank 1 failed (exit code 1): stage train: RuntimeError: rank 1 broke on purpose" in lines[-1]
    assert "broke on purpose" in (tmp_path / "out" / "run.rank1.log").read_text()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------- checks (no processes)
def _recipe(tiny_model_dir, sharegpt_file, load="", train="", distributed=""):
    return f"""name = "dist"

[load]
use = "{'unsloth' if 'unsloth' in load else 'hf'}"
model = "{tiny_model_dir}"
{load.replace('unsloth', '')}
[adapt]
use = "lora"

[format]
dataset = "{sharegpt_file}"

[train]
use = "sft"
max_steps = 20
{train}
[distributed]
{distributed}
"""


def test_impossible_distributed_settings_are_recipe_errors_at_their_line(recipe_problems, tiny_model_dir, sharegpt_file):
    def problems(**parts):
        return "\n".join(recipe_problems(_recipe(tiny_model_dir, sharegpt_file, **parts)))

    text = _recipe(tiny_model_dir, sharegpt_file, load="unsloth", distributed='strategy = "fsdp"')
    line = text.splitlines().index('strategy = "fsdp"') + 1
    assert f'recipe.toml:{line}:1: distributed.strategy: strategy "fsdp" cannot shard a model of backend "unsloth"' \
        in problems(load="unsloth", distributed='strategy = "fsdp"')
    assert 'strategy "deepspeed" cannot shard a model of backend "unsloth"' in problems(load="unsloth", distributed='strategy = "deepspeed"')
    assert "distributed" not in problems(load="unsloth", distributed='strategy = "ddp"')  # Unsloth runs under DDP
    assert "cannot shard 8-bit" in problems(load="load_in_8bit = true", distributed='strategy = "fsdp"')
    assert "distributed.strategy: expected 'ddp', 'fsdp' or 'deepspeed'" in problems(distributed='strategy = "zero3"') \
        or "distributed.strategy: Input should be 'ddp', 'fsdp' or 'deepspeed'" in problems(distributed='strategy = "zero3"')
    assert 'unknown key for a recipe (top level); did you mean "strategy"' in problems(distributed='stratgy = "ddp"') \
        or 'did you mean "strategy"' in problems(distributed='stratgy = "ddp"')
    assert "train.global_batch_size: global_batch_size = 6 is not a multiple of per_device_train_batch_size x " \
           "processes = 2 x 2 = 4" in problems(train="global_batch_size = 6", distributed="nproc_per_node = 2")
    assert "set global_batch_size or gradient_accumulation_steps, not both" in problems(
        train="global_batch_size = 8\ngradient_accumulation_steps = 2")
    assert "zero_stage is a DeepSpeed setting" in problems(distributed="zero_stage = 3")


def test_launch_preflight_names_what_this_machine_rules_out(tmp_path, tiny_model_dir, sharegpt_file, monkeypatch):
    from recipetune import launcher
    from recipetune import load_recipe_text
    from recipetune.recipe.loader import locate_problems

    def launch_problems(nproc, flag=True, **parts):
        recipe = load_recipe_text(_recipe(tiny_model_dir, sharegpt_file, **parts), file="r.toml")
        request = launcher.LaunchRequest(nproc_per_node=nproc)
        return [p.render() for p in locate_problems(recipe, launcher.launch_problems(recipe, request, flag=flag))]

    assert launch_problems(2) == []  # 2 gloo processes on a CPU: allowed (these tests)
    recipe = load_recipe_text(_recipe(tiny_model_dir, sharegpt_file))
    several = [p.render() for p in launcher.command_line_problems(launcher.LaunchRequest(1, nnodes=2, node_rank=2))]
    assert launcher.launch_problems(recipe, launcher.LaunchRequest(1, nnodes=2), True) == []  # a worker's view
    assert any("--nnodes 2 needs --rdzv-endpoint" in p for p in several)
    assert any("--node-rank 2 is not below --nnodes 2" in p for p in several)
    # deepspeed is not installed here (nor is a GPU): both are named, at the strategy's line
    found = launch_problems(2, distributed='strategy = "deepspeed"')
    assert any("needs the deepspeed package" in p for p in found) and any("needs NVIDIA GPUs" in p for p in found)
    assert any("fsdp" in p and "warning" in p for p in launch_problems(2, distributed='strategy = "fsdp"'))
    assert any("global_batch_size = 4 is not a multiple" in p and "2 x 3 = 6" in p
               for p in launch_problems(3, train="global_batch_size = 4"))
    # a machine with one GPU (mocked: this machine has none) cannot run two processes
    monkeypatch.setattr(launcher, "cuda_device_count", lambda: 1)
    assert any("--nproc-per-node 2: 2 processes per node is more than the 1 GPU(s) this machine has" in p
               for p in launch_problems(2))
    text = _recipe(tiny_model_dir, sharegpt_file, distributed="nproc_per_node = 2")
    found = launch_problems(2, flag=False, distributed="nproc_per_node = 2")
    assert any(f":{text.splitlines().index('nproc_per_node = 2') + 1}:1: distributed.nproc_per_node: 2 processes" in p for p in found)


def test_recipe_run_refuses_deepspeed_before_starting_any_worker(tmp_path, tiny_model_dir, sharegpt_file):
    recipe = tmp_path / "r.toml"
    recipe.write_text(_recipe(tiny_model_dir, sharegpt_file, distributed='strategy = "deepspeed"'))
    done = run_cli("run", str(recipe), "--nproc-per-node", "2", "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert "distributed.strategy: strategy \"deepspeed\" needs the deepspeed package" in done.stderr
    assert "torch.distributed.run" not in done.stderr and not (tmp_path / "out").exists()


def test_workers_get_the_command_line_without_the_launcher_options():
    import click

    from recipetune import launcher
    from recipetune.cli import cli

    command = cli.commands["run"]
    ctx = command.make_context("run", ["r.toml", "train.max_steps=5", "--output-dir", "out", "--resume",
                                       "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1",
                                       "--rdzv-endpoint", "10.0.0.1:29500"])
    args = launcher.worker_arguments(ctx)
    assert args[0] == "run" and args[-3:] == ["--", "r.toml", "train.max_steps=5"]
    assert "--resume" in args and args[args.index("--output-dir") + 1] == "out"
    assert not any(a.startswith(("--nproc", "--nnodes", "--node-rank", "--rdzv")) for a in args)
    request = launcher.launch_request(type("R", (), {"header": type("H", (), {"distributed": type("D", (), {"nproc_per_node": None})})})(),
                                         ctx.params)
    assert request.torchrun_args() == ["--nproc-per-node", "2", "--nnodes", "2", "--rdzv-endpoint", "10.0.0.1:29500",
                                       "--rdzv-backend", "static", "--node-rank", "1"]
    assert launcher.LaunchRequest(nproc_per_node=4).torchrun_args() == ["--nproc-per-node", "4", "--standalone"]
    assert isinstance(ctx, click.Context)


def test_one_process_gets_no_distributed_trainer_arguments(tiny_model_dir, sharegpt_file):
    """One process runs exactly as before: no extra Trainer arguments, the recipe's accumulation."""
    from recipetune import load_recipe_text
    from recipetune_plugins.distributed import accumulation_steps, effective_batch, trainer_arguments

    recipe = load_recipe_text(_recipe(tiny_model_dir, sharegpt_file, train="gradient_accumulation_steps = 3",
                                      distributed='strategy = "fsdp"'))
    run = type("FakeRun", (), {"recipe": recipe, "world_size": 1})()
    assert trainer_arguments(run, loaded=None) == {}
    assert accumulation_steps(run, recipe.train.options) == 3
    assert effective_batch(run, recipe.train.options)["effective_batch"] == 6


def test_sharding_strategies_become_the_trainers_own_settings(tiny_model_dir, sharegpt_file):
    from transformers import AutoModelForCausalLM

    from recipetune import load_recipe_text
    from recipetune_plugins.distributed import accumulation_steps, quant_storage_dtype, trainer_arguments

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = type("Loaded", (), {"model": model})()

    def run_of(distributed, train="global_batch_size = 16", world=4):
        recipe = load_recipe_text(_recipe(tiny_model_dir, sharegpt_file, train=train, distributed=distributed))
        return type("FakeRun", (), {"recipe": recipe, "world_size": world})()

    fsdp = trainer_arguments(run_of('strategy = "fsdp"\ncpu_offload = true'), loaded)
    assert fsdp["fsdp"] is True and fsdp["ddp_backend"] == "gloo" and fsdp["ddp_find_unused_parameters"] is False
    assert fsdp["fsdp_config"]["version"] == 2 and fsdp["fsdp_config"]["state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert fsdp["fsdp_config"]["cpu_offload"] is True
    zero3 = trainer_arguments(run_of('strategy = "deepspeed"\nzero_stage = 3'), loaded)["deepspeed"]
    assert zero3["zero_optimization"]["stage"] == 3 and zero3["train_micro_batch_size_per_gpu"] == "auto"
    assert "deepspeed" not in trainer_arguments(run_of('strategy = "ddp"'), loaded)
    # global batch 16 = 2 per device x 2 accumulation x 4 processes = 2 x 8 x 1 process
    assert accumulation_steps(run_of("", world=4), run_of("").recipe.train.options) == 2
    assert accumulation_steps(run_of("", world=1), run_of("").recipe.train.options) == 8
    import torch

    assert quant_storage_dtype(run_of('strategy = "fsdp"'), torch.bfloat16) is torch.bfloat16  # so 4-bit shards
    assert quant_storage_dtype(run_of('strategy = "ddp"'), torch.bfloat16) is None
    assert quant_storage_dtype(run_of('strategy = "fsdp"', world=1), torch.bfloat16) is None


def test_memory_per_gpu_under_each_strategy_for_recipe_plan():
    """Llama-3.1-8B QLoRA on 2 GPUs: FSDP keeps half the frozen weights (+ two gathered layers) per GPU, DDP all of
    them; full fine-tuning on 8 GPUs fits 139 GiB only when the trainable state is sharded."""
    from recipetune_plugins.distributed_memory import per_gpu_estimate, strategy_lines
    from recipetune_plugins.memory_estimate import KNOWN_CONFIGS, estimate

    cfg = KNOWN_CONFIGS["llama-3.1-8b"]
    qlora = estimate(cfg, 4, 16, 2, 2048, True, optim="adamw_8bit")
    assert per_gpu_estimate(qlora, cfg, 1, "fsdp") is qlora  # one GPU: the one-GPU estimate
    ddp, fsdp = per_gpu_estimate(qlora, cfg, 2, "ddp"), per_gpu_estimate(qlora, cfg, 2, "fsdp")
    assert ddp.parts["weights"] == qlora.parts["weights"] and ddp.total_gib > qlora.total_gib  # + gradient buckets
    layer = (fsdp.parts["weights"] - qlora.parts["weights"] / 2) / 2
    assert 0 < layer < qlora.parts["weights"] / cfg["num_hidden_layers"] * 1.01
    assert fsdp.parts["activations"] == ddp.parts["activations"]  # per micro-batch, on every GPU
    full = estimate(cfg, 16, None, 1, 2048, True, optim="adamw_torch")
    lines = strategy_lines(full, cfg, 8, capacity_gib=139, zero_stage=3)
    assert [line.split()[0] for line in lines] == ["ddp", "fsdp", "deepspeed"]
    assert lines[0].endswith("does not fit 139 GiB") and lines[1].endswith("fits") and lines[2].endswith("fits")


def test_recipe_plan_shows_memory_per_gpu_for_n_gpus(tmp_path):
    recipe = tmp_path / "p8.toml"
    recipe.write_text('name = "p8"\n[load]\nuse = "hf"\nmodel = "unsloth/Meta-Llama-3.1-8B-Instruct"\nload_in_4bit = true\n'
                      '[adapt]\nuse = "lora"\n[format]\ndataset = "mlabonne/FineTome-100k"\n[train]\nuse = "sft"\n'
                      'max_steps = 60\nglobal_batch_size = 16\n[distributed]\nstrategy = "fsdp"\nnproc_per_node = 2\n')
    done = run_cli("plan", str(recipe), "--gpu", "H200", "--no-data", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert "on 2 GPUs, peak per GPU by strategy (the recipe's: fsdp):" in plan["lines"]
    per_gpu = plan["per_gpu_gib"]
    assert per_gpu["fsdp"] < per_gpu["deepspeed"] < per_gpu["ddp"]  # ZeRO-2 shards the trainable state only
    assert per_gpu["ddp"] > plan["peak_reserved_gib"]  # DDP: one GPU's memory and its gradient buckets


def test_rank_0_rebuilds_a_whole_model_from_gathered_sharded_weights(tmp_path, tiny_model_dir, sharegpt_file):
    """FSDP / ZeRO-3 need GPUs: the Trainer and its Accelerator are stand-ins here (say so), handing over the full
    state dict Accelerate's get_state_dict gathers; what is real is rank 0 rebuilding the model from it."""
    import torch

    from recipetune import load_recipe_text
    from recipetune.plugins import get_plugin_manager
    from recipetune.runner import prepare_run
    from recipetune_plugins.distributed import gather_sharded_model

    pm = get_plugin_manager()
    recipe = load_recipe_text(_recipe(tiny_model_dir, sharegpt_file, distributed='strategy = "fsdp"'), pm=pm)
    run = prepare_run(recipe, pm, tmp_path / "run")
    trained = recipe.adapt.component.adapt(run, recipe.load.component.load(run))
    with torch.no_grad():
        for name, param in trained.model.named_parameters():
            if param.requires_grad:
                param.add_(0.5)  # "training"
    gathered = trained.model.state_dict()

    class Accelerator:
        def get_state_dict(self, model):
            return gathered

    run.state["hf_trainer"] = type("Trainer", (), {"is_fsdp_enabled": True, "model": None, "accelerator": Accelerator()})()
    sharded = type("Loaded", (), {"model": None})()
    gather_sharded_model(run, sharded)
    rebuilt = dict(sharded.model.named_parameters())
    for name, param in trained.model.named_parameters():
        assert torch.equal(rebuilt[name], param), name
    assert any(p.requires_grad for p in rebuilt.values())


def test_ctrl_c_in_the_launcher_is_an_interrupt_not_a_traceback(monkeypatch):
    """torch's elastic agent turns Ctrl-C into a SignalException after passing it on to the workers (which save a
    checkpoint and stop: measured by hand, docs/distributed.md); the launcher must read it as an interrupt."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from recipetune import launcher

    def interrupted(args):
        raise SignalException("Process 1 got signal: 2", sigval=2)

    monkeypatch.setattr(torchrun, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        launcher.launch(launcher.LaunchRequest(nproc_per_node=2), ["run", "--", "r.toml"])


def test_packed_training_keeps_the_global_batch(tmp_path, tiny_model_dir, sharegpt_file):
    """Packing re-splits each optimizer step into micro-batches: it starts from the accumulation the global batch
    asks for (12 = 2 per device x 6), not from gradient_accumulation_steps' default (4)."""
    from recipetune import load_recipe_text
    from recipetune.data.pipeline import build_dataset
    from recipetune.plugins import get_plugin_manager
    from recipetune.runner import prepare_run
    from recipetune_plugins.packing import prepare

    pm = get_plugin_manager()
    recipe = load_recipe_text(_recipe(tiny_model_dir, sharegpt_file, train="global_batch_size = 12\npacking = true\n"
                                      "tokens_per_batch = 256"), pm=pm)
    run = prepare_run(recipe, pm, tmp_path / "run")
    loaded = recipe.load.component.load(run)
    dataset = build_dataset(recipe, loaded.tokenizer, loaded.model, loaded.max_seq_length, use_cache=False)
    packed = prepare(run, loaded, dataset, recipe.train.options)
    assert packed is not None
    config = packed.config
    assert config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] == 12, config
