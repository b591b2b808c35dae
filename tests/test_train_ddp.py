"""2-process DDP on CPU (gloo, launched by torchrun) against one process on the same global batch."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from multispike.data import TensorLoader
from multispike.train import DistInfo, Trainer, load_checkpoint, resolve_config, run_training

from test_train_engine import TINY_MODEL, Tiny, tiny_data

SCRIPT = TINY_MODEL + textwrap.dedent('''
    import sys
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from multispike.data import TensorLoader
    from multispike.train import Trainer, init_distributed, resolve_config, run_training

    out = sys.argv[1]
    dist = init_distributed("cpu")
    assert dist.world_size == 2 and dist.backend == "gloo", dist

    # (1) one optimizer step on this rank's half of the global batch
    cfg = resolve_config(overrides=dict(model="tiny", num_classes=3, in_channels=1, timesteps=2, out=out + "/step",
                                        opt="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, sched="constant",
                                        progress=False))
    torch.manual_seed(0)
    model = Tiny(bn=False, dropout=0.0)
    images, labels = tiny_data(64)
    train = TensorLoader(images, labels, 8, seed=3, rank=dist.rank, world_size=dist.world_size)
    trainer = Trainer(model, train, None, cfg, dist=dist)
    x, y = next(iter(train))
    loss, _ = trainer.train_step(x, y)
    if dist.rank == 0:
        save_file({n: p.grad.contiguous() for n, p in model.named_parameters()}, out + "/grads_ddp.safetensors")

    # (2) a whole run through run_training: rank 0 alone logs and checkpoints
    cfg = resolve_config(overrides=dict(model="tiny", num_classes=3, in_channels=1, timesteps=2, epochs=2,
                                        out=out + "/full", opt="sgd", lr=0.05, progress=False, batch_size=8))
    torch.manual_seed(0)
    model = Tiny()
    train = TensorLoader(images, labels, 8, seed=3, rank=dist.rank, world_size=dist.world_size)
    test = TensorLoader(images[:16], labels[:16], 4, shuffle=False, rank=dist.rank, world_size=dist.world_size)
    summary = run_training(cfg, model=model, train_loader=train, eval_loader=test, dist=dist)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/final_rank{dist.rank}.safetensors")
    with open(f"{out}/done.rank{dist.rank}", "w") as f:   # a file, not stdout: the ranks' prints interleave
        f.write(str(summary["final_acc"]))
    # leave together, and without interpreter finalization: a gloo worker thread that torch keeps alive after DDP
    # aborts the process if it frees a collective's tensors while the interpreter finalizes (exit_process)
    from multispike.train import exit_process
    from multispike.train.distributed import barrier
    barrier(dist)
    exit_process(0)
''')


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    script = root / "ddp_tiny.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(root)], env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0 and "gloo" in proc.stderr.lower() and "address" in proc.stderr.lower():
        pytest.skip(f"gloo cannot open sockets here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    done = [root / f"done.rank{r}" for r in (0, 1)]
    assert all(d.exists() for d in done), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert done[0].read_text() == done[1].read_text()   # final accuracy is all-reduced: the ranks agree
    return root


def test_ddp_gradients_equal_single_process_on_the_global_batch(ddp_run, tmp_path):
    cfg = resolve_config(overrides=dict(model="tiny", num_classes=3, in_channels=1, timesteps=2, out=str(tmp_path),
                                        opt="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, sched="constant",
                                        progress=False))
    torch.manual_seed(0)
    model = Tiny(bn=False, dropout=0.0)
    images, labels = tiny_data(64)
    # the two ranks' first batches (8 each, strided shards of one permutation) are this batch of 16
    train = TensorLoader(images, labels, 16, seed=3)
    trainer = Trainer(model, train, None, cfg, dist=DistInfo())
    x, y = next(iter(train))
    trainer.train_step(x, y)
    ddp = load_file(str(ddp_run / "grads_ddp.safetensors"))
    assert set(ddp) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        # same math, different summation order (two half-batch means averaged by all-reduce)
        torch.testing.assert_close(ddp[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert any(float(g.abs().sum()) > 0 for g in ddp.values())


def test_ddp_run_logs_once_checkpoints_on_rank0_and_keeps_ranks_in_sync(ddp_run):
    full = ddp_run / "full"
    lines = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in lines] == ["epoch", "epoch", "summary"]       # one writer
    assert lines[0]["train_samples"] == 64 and lines[0]["eval_samples"] == 16   # metrics summed over ranks
    assert lines[-1]["world_size"] == 2 and lines[0]["step"] == 4               # 64 / (8 x 2) steps per epoch
    r0, r1 = (load_file(str(ddp_run / f"final_rank{r}.safetensors")) for r in (0, 1))
    for k in r0:   # parameters by DDP, BN running stats by the end-of-epoch reduction (dist_bn="reduce")
        torch.testing.assert_close(r0[k], r1[k], atol=0, rtol=0, msg=k)
    ck = load_checkpoint(full)
    assert ck.meta["world_size"] == 2 and len(ck.meta["rng"]) == 2
    for k, v in ck.model_state.items():
        torch.testing.assert_close(v, r0[k], atol=0, rtol=0)


def test_ddp_checkpoint_resumes_in_a_single_process(ddp_run, tmp_path):
    import shutil
    shutil.copytree(ddp_run / "full", tmp_path / "full")
    images, labels = tiny_data(64)
    train = TensorLoader(images, labels, 8, seed=3)
    test = TensorLoader(images[:16], labels[:16], 4, shuffle=False)
    cfg = resolve_config(overrides=dict(model="tiny", num_classes=3, in_channels=1, timesteps=2, epochs=3,
                                        out=str(tmp_path / "full"), opt="sgd", lr=0.05, progress=False, batch_size=8,
                                        resume="auto"))
    with pytest.warns(UserWarning, match="written by 2 process"):
        summary = run_training(cfg, model=Tiny(), train_loader=train, eval_loader=test, dist=DistInfo())
    assert summary["steps"] == 8 + 8 and summary["world_size"] == 1


def test_cli_under_torchrun_trains_and_exits_with_the_commands_code(tmp_path):
    """``torchrun -m multispike train``: a finished run exits 0 on both ranks (through exit_process, which skips
    the interpreter finalization that let a gloo worker abort a finished run); an error keeps its exit code."""
    from conftest import DIGITS_ARGS

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "multispike", "train", "--neuron", "relu", "--epochs", "1", "--subset", "128", *DIGITS_ARGS,
               "--out", str(out)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert (out / "summary.json").exists() and (out / "checkpoints" / "last.json").exists()
    # the same command again: both ranks refuse the folder with the CLI's bad-input code (2), not a crash
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "multispike train: error:" in proc.stderr and "already holds checkpoints" in proc.stderr
    assert "exitcode: 2" in proc.stderr or "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]


EXIT_SCRIPT = textwrap.dedent('''
    import atexit, sys
    from multispike.train import distributed
    class Finalized:
        def __del__(self):
            print("finalized", flush=True)
    keep = Finalized()                                    # its __del__ would run during interpreter finalization
    atexit.register(print, "atexit ran")
    print("buffered", end="")                             # no newline, no flush: exit_process must flush it
    distributed._group_started = sys.argv[1] == "group"   # as init_distributed leaves it under torchrun
    distributed.exit_process(3)
''')


@pytest.mark.parametrize("group", ["group", "alone"])
def test_exit_process_skips_finalization_only_after_a_process_group(tmp_path, group):
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), group], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.startswith("buffered") and "atexit ran" in proc.stdout
    # after a group, no finalization (where a gloo worker can abort the process); alone, a plain sys.exit
    assert ("finalized" in proc.stdout) == (group == "alone")
