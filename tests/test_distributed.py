"""DistributedDataParallel training under torchrun (gloo, 2 CPU processes) equals one process.

Tolerances (measured on this 2-core machine, 4 iterations, batch 4, lr 1e-3, seed 3, phantom:2):

* loss curve: |2 processes - 1 process| <= 3e-8 measured; the loss is a float32 mean whose
  only difference is the order of the sums (per-rank means averaged in float64), so 1e-5 is
  a margin of ~300x. Without synchronised batch norm (per-rank statistics) it is 1e-3, with
  another seed 1.6e-2: both fail.
* weights: Adam divides each step by the gradient's running RMS, so a summation-order
  difference in a near-zero gradient component can flip that weight's step (up to ~2 lr per
  step). Such flips are rare: the distance between the two final weight vectors is 0.5 % of
  the distance training moved them (||w_N - w_1|| / ||w_1 - w_init||); we allow 5 %.
  Per-rank batch norm gives 116 %, another seed 2000 %.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iunet_nb import cli
from iunet_nb.model.distributed import (DistContext, check_divisible, convert_sync_batchnorm,
                                  distributed, get_rank, get_world_size, init_distributed,
                                  is_main)
from iunet_nb.errors import ConfigError
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.model.preprocess import PreprocessConfig
from iunet_nb.model.train import TrainConfig, _resume_payload, prepare_cases, train

ITERATIONS, LR, SEED = 4, 1e-3, 3
LOSS_ATOL = 1e-5
WEIGHT_REL_TOL = 0.05
_TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _train_args(out: Path, *, iterations: int = ITERATIONS, batch: int = 4, seed: int = SEED,
                resume: bool = False) -> list[str]:
    """The CLI arguments of the tiny run (the conftest ``card``'s net and working grid)."""
    return ["train", "--data", "phantom:2", "--base-channels", "4", "--size", "8", "16", "16",
            "--iterations", str(iterations), "--batch", str(batch), "--lr", str(LR),
            "--seed", str(seed), "--checkpoint-every", "2", "--device", "cpu",
            "--out", str(out)] + (["--resume"] if resume else [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], log_dir: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc -m iunet_nb.cli ...``, each rank's output in log_dir."""
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "--log-dir", str(log_dir), "--redirects", "3", "-m", "iunet_nb.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def _rank_output(log_dir: Path, rank: int) -> str:
    """stdout + stderr that torchrun's --redirects wrote for one local rank."""
    files = sorted(log_dir.glob(f"**/attempt_0/{rank}/std*.log"))
    assert len(files) == 2, f"torchrun logs not found under {log_dir}"
    return "".join(f.read_text() for f in files)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)


def _relative_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                       init: dict[str, torch.Tensor]) -> float:
    """||b - a|| / ||a - init|| over the trainable tensors (not BN running statistics)."""
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    diff = torch.cat([(b[k] - a[k]).flatten() for k in keys]).norm()
    moved = torch.cat([(a[k] - init[k]).flatten() for k in keys]).norm()
    return float(diff / moved)


def _initial_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(SEED)  # train() seeds the initial weights with config.seed
    return build_network(NetConfig(base_channels=4)).state_dict()


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The 1-process reference run, through the same CLI in this process."""
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (the autouse fixture comes later)
    try:
        assert cli.main(_train_args(out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The same run under torchrun, 2 processes, gloo: (out folder, log folder, result)."""
    base = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(_train_args(base / "out"), base / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "out", base / "logs", proc


# -- under torchrun ---------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_give_the_one_process_result(single, ddp, tmp_path):
    out = ddp[0]
    one, two = _losses(single), _losses(out)
    assert len(two) == ITERATIONS
    assert two == pytest.approx(one, abs=LOSS_ATOL)
    init = _initial_weights()
    w1, w2 = _weights(single), _weights(out)
    assert w1.keys() == w2.keys()
    assert _relative_distance(w1, w2, init) < WEIGHT_REL_TOL
    # the measure can fail: another seed (other phantoms, weights and batches) is far away
    assert cli.main(_train_args(tmp_path, seed=SEED + 1)) == 0
    assert _relative_distance(w1, _weights(tmp_path), init) > 20 * WEIGHT_REL_TOL
    assert max(abs(a - b) for a, b in zip(one, _losses(tmp_path))) > 100 * LOSS_ATOL


@pytest.mark.slow
def test_only_rank_zero_writes_logs_and_prints(ddp):
    out, logs, _ = ddp
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.json", "checkpoint.pt", "loss.jsonl", "model.json", "model.pt",
        "train_config.json"]
    # loss.jsonl is opened for appending: a second writer would double the lines
    assert [json.loads(x)["iteration"] for x in (out / "loss.jsonl").read_text().splitlines()] \
        == list(range(1, ITERATIONS + 1))
    rank0, rank1 = _rank_output(logs, 0), _rank_output(logs, 1)
    assert "trained iunet for 4 iterations" in rank0 and "Training" in rank0
    assert "trained" not in rank1 and "Training" not in rank1 and "INFO" not in rank1


@pytest.mark.slow
def test_card_records_world_size_and_backend(ddp, single):
    card = json.loads((ddp[0] / "model.json").read_text())
    assert card["machine"].endswith("; DistributedDataParallel, 2 processes, gloo")
    assert "DistributedDataParallel" not in json.loads((single / "model.json").read_text())[
        "machine"]
    # the saved weights are a plain network's (no SyncBatchNorm leftovers)
    from iunet_nb.model.checkpoint import load_model

    model, _ = load_model(ddp[0] / "model.pt")
    assert any(type(m) is torch.nn.BatchNorm3d for m in model.modules())


@pytest.mark.slow
def test_resume_under_torchrun_continues_a_one_process_checkpoint(single, tmp_path):
    out = tmp_path / "out"
    assert cli.main(_train_args(out, iterations=2)) == 0
    proc = _torchrun(_train_args(out, resume=True), tmp_path / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in _rank_output(tmp_path / "logs", 0)
    losses = _losses(out)
    assert len(losses) == ITERATIONS
    assert losses == pytest.approx(_losses(single), abs=LOSS_ATOL)
    assert _relative_distance(_weights(single), _weights(out), _initial_weights()) \
        < WEIGHT_REL_TOL
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == ITERATIONS


def test_resume_payload_carries_the_checkpoint_or_the_refusal_to_every_rank(ellipsoid_case,
                                                                           tmp_path):
    cfg = TrainConfig(net=NetConfig(base_channels=4), iterations=2, batch_size=2,
                      preprocess=PreprocessConfig(size_zyx=(8, 16, 16)), checkpoint_every=1)
    images, masks = prepare_cases([ellipsoid_case], cfg.preprocess)
    result = train(images, masks, cfg, tmp_path, progress=False)
    payload = _resume_payload(tmp_path / "checkpoint.pt", cfg)
    assert payload["state"]["iteration"] == 2 and payload["losses"] == result.losses
    changed = TrainConfig.from_dict({**cfg.to_dict(), "seed": 9})
    refusal = _resume_payload(tmp_path / "checkpoint.pt", changed)
    assert set(refusal) == {"error"} and "different settings (['seed'])" in refusal["error"]


# -- the torchrun environment, without starting processes -------------------------------------
def _fake_torchrun_env(monkeypatch, world_size: int = 2, rank: int = 0) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def test_batch_not_divisible_by_the_world_size_is_refused(monkeypatch, ellipsoid_case, capsys,
                                                          tmp_path):
    cfg = TrainConfig(net=NetConfig(base_channels=4), iterations=1, batch_size=3,
                      preprocess=PreprocessConfig(size_zyx=(8, 16, 16)))
    images, masks = prepare_cases([ellipsoid_case], cfg.preprocess)
    _fake_torchrun_env(monkeypatch)
    with pytest.raises(ConfigError, match="batch size 3 cannot be split evenly over 2 processes"):
        train(images, masks, cfg, None, progress=False)
    # the CLI says so before loading any data, and exits with the error code
    assert cli.main(_train_args(tmp_path / "x", batch=3)) == 2
    assert "multiple of 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    check_divisible(4, 2)  # no error


def test_environment_is_read_and_checked(monkeypatch):
    for k in _TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    assert (get_world_size(), get_rank(), is_main()) == (1, 0, True)
    _fake_torchrun_env(monkeypatch, world_size=4, rank=3)
    assert (get_world_size(), get_rank(), is_main()) == (4, 3, False)
    monkeypatch.delenv("LOCAL_RANK")
    with pytest.raises(ConfigError, match=r"\['LOCAL_RANK'\] are not"):
        get_world_size()
    monkeypatch.setenv("LOCAL_RANK", "zero")
    with pytest.raises(ConfigError, match="must be integers"):
        get_rank()
    _fake_torchrun_env(monkeypatch, world_size=2, rank=2)
    with pytest.raises(ConfigError, match="0 <= RANK < WORLD_SIZE"):
        init_distributed("cpu")
    with pytest.raises(ConfigError, match="rank < world_size"):
        DistContext(rank=1, world_size=1)


def test_torchrun_with_one_process_is_a_single_process(monkeypatch):
    _fake_torchrun_env(monkeypatch, world_size=1, rank=0)
    with distributed("cpu") as ctx:
        assert not torch.distributed.is_initialized()
        assert (ctx.world_size, ctx.backend, ctx.describe()) == (1, "", "single process")


def test_single_process_context_changes_nothing(monkeypatch):
    for k in _TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    with distributed("cpu") as ctx:
        assert not torch.distributed.is_initialized()
        assert ctx.is_main and not ctx.is_distributed and ctx.device == torch.device("cpu")
        batch = torch.arange(6.0)
        assert torch.equal(ctx.shard(batch), batch)
        assert ctx.mean(torch.tensor(0.25)) == 0.25
        assert ctx.broadcast({"a": 1}) == {"a": 1}
        ctx.barrier()


def test_shard_takes_this_ranks_contiguous_slice():
    batch = torch.arange(8)
    assert DistContext(rank=1, world_size=4).shard(batch).tolist() == [2, 3]
    assert DistContext(rank=0, world_size=2).shard(batch).tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="batch size 8 cannot be split evenly over 3"):
        DistContext(rank=0, world_size=3).shard(batch)


def test_sync_batchnorm_conversion_keeps_weights_keys_and_eval_outputs():
    torch.manual_seed(0)
    plain = build_network(NetConfig(base_channels=4))
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        plain.train()(x)  # move the running statistics off their defaults
        expected = plain.eval()(x)
    keys = list(plain.state_dict())
    synced = convert_sync_batchnorm(plain, torch.device("cpu"))
    assert not any(type(m) is torch.nn.BatchNorm3d for m in synced.modules())
    assert list(synced.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(synced.eval()(x), expected)
        # no process group: training mode is plain batch norm over the local batch
        reference = build_network(NetConfig(base_channels=4))
        reference.load_state_dict(synced.state_dict())
        assert torch.equal(synced.train()(x), reference.train()(x))
