"""Training: seeded, checkpointed, resumable with the identical continuation; model cards."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from iunet_nb.errors import CheckpointError, ConfigError, InputError
from iunet_nb.model.augment import AugmentConfig
from iunet_nb.model.checkpoint import ModelCard, load_model, save_model
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.model.preprocess import PreprocessConfig
from iunet_nb.model.train import TrainConfig, load_training_cases, prepare_cases, train

TINY = TrainConfig(net=NetConfig(base_channels=4), preprocess=PreprocessConfig(size_zyx=(8, 16, 16)),
                   iterations=4, batch_size=2, lr=1e-3, seed=3, checkpoint_every=2)


@pytest.fixture
def prepared(ellipsoid_case):
    ct, mask = ellipsoid_case
    return prepare_cases([(ct, mask), (ct, mask)], TINY.preprocess)


def test_prepare_cases_crops_to_reference_box(prepared, ellipsoid_case):
    images, masks = prepared
    assert images.shape == (2, 1, 8, 16, 16) and masks.shape == (2, 8, 16, 16)
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    # the crop is the reference box plus a 5 % margin (ceil: 2 voxels per side here), so the
    # organ's share of the working grid is its share of that crop
    ref = ellipsoid_case[1].array
    extent = [np.ptp(ax) + 1 + 2 * 2 for ax in np.nonzero(ref)]
    assert float(masks.mean()) == pytest.approx(ref.sum() / np.prod(extent), rel=0.1)
    assert set(np.unique(masks.numpy())) == {0.0, 1.0}


def test_prepare_cases_rejects_empty_mask(ellipsoid_case):
    ct, mask = ellipsoid_case
    with pytest.raises(InputError, match="empty"):
        prepare_cases([(ct, mask.with_array(np.zeros_like(mask.array)))], TINY.preprocess)


def test_train_writes_checkpoint_model_and_loss_log(prepared, tmp_path):
    result = train(*prepared, TINY, tmp_path, progress=False, data_description="ellipsoids")
    lines = (tmp_path / "loss.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3, 4]
    assert all(np.isfinite(result.losses))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4
    model, card = load_model(tmp_path / "model.pt")
    assert card.data == "ellipsoids" and card.iterations == 4
    x = prepared[0][:1]
    with torch.no_grad():
        assert torch.equal(model(x), result.model(x))


def test_same_seed_same_weights_and_resume_is_identical(prepared, tmp_path):
    straight = train(*prepared, TINY, tmp_path / "a", progress=False)
    half = TrainConfig.from_dict({**TINY.to_dict(), "iterations": 2})
    train(*prepared, half, tmp_path / "b", progress=False)
    resumed = train(*prepared, TINY, tmp_path / "b", resume=True, progress=False)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), name
    other = train(*prepared, TrainConfig.from_dict({**TINY.to_dict(), "seed": 4}), None,
                  progress=False)
    assert other.losses != straight.losses


def test_resume_with_other_settings_is_refused(prepared, tmp_path):
    train(*prepared, TINY, tmp_path, progress=False)
    changed = TrainConfig.from_dict({**TINY.to_dict(), "lr": 5e-4})
    with pytest.raises(CheckpointError, match="different settings"):
        train(*prepared, changed, tmp_path, resume=True, progress=False)


def test_continue_from_another_run_at_a_finer_working_size(prepared, ellipsoid_case, tmp_path):
    half = TrainConfig.from_dict({**TINY.to_dict(), "iterations": 2})
    train(*prepared, half, tmp_path / "coarse", progress=False)
    source_log = (tmp_path / "coarse" / "loss.jsonl").read_text()
    fine = TrainConfig.from_dict({**TINY.to_dict(), "preprocess": {
        **TINY.preprocess.to_dict(), "size_zyx": [16, 16, 16]}})
    ct, mask = ellipsoid_case
    images, masks = prepare_cases([(ct, mask), (ct, mask)], fine.preprocess)
    cont = train(images, masks, fine, tmp_path / "fine", progress=False,
                 continue_from=tmp_path / "coarse" / "checkpoint.pt")
    # the first two iterations are the coarse run's, the last two ran on the 16 x 16 x 16 grid
    coarse_losses = [json.loads(line)["loss"] for line in source_log.splitlines()]
    assert len(cont.losses) == 4 and cont.losses[:2] == pytest.approx(coarse_losses)
    lines = (tmp_path / "fine" / "loss.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3, 4]
    assert (tmp_path / "coarse" / "loss.jsonl").read_text() == source_log   # untouched
    model, card = load_model(tmp_path / "fine" / "model.pt")
    assert card.iterations == 4 and tuple(card.preprocess.size_zyx) == (16, 16, 16)
    # the weights carry over: continuing to the source's own iteration trains nothing
    same = train(images, masks, TrainConfig.from_dict({**fine.to_dict(), "iterations": 2}), None,
                 progress=False, continue_from=tmp_path / "coarse" / "checkpoint.pt")
    coarse_model, _ = load_model(tmp_path / "coarse" / "model.pt")
    for (name, p), q in zip(coarse_model.state_dict().items(), same.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert not all(torch.equal(p, q) for p, q in zip(coarse_model.state_dict().values(),
                                                      cont.model.state_dict().values()))
    with pytest.raises(CheckpointError, match="different settings"):
        train(images, masks, TrainConfig.from_dict({**fine.to_dict(), "lr": 5e-4}), None,
              progress=False, continue_from=tmp_path / "coarse" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(images, masks, fine, None, progress=False, continue_from=tmp_path / "nope.pt")


def test_training_reduces_the_loss(prepared):
    cfg = TrainConfig.from_dict({**TINY.to_dict(), "iterations": 16, "lr": 1e-2,
                                 "augment": AugmentConfig().to_dict()})
    result = train(*prepared, cfg, None, progress=False)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.1


def test_ema_model_is_the_debiased_moving_average_of_the_iterates(prepared, tmp_path):
    decay = 0.5
    # the raw iterates w_1..w_4: runs of 1..4 steps share the seeded trajectory
    iterates = [train(*prepared, dataclasses.replace(TINY, iterations=k, ema_decay=0.0), None,
                      progress=False).model.state_dict() for k in range(1, 5)]
    # sum_i (1 - d) d**(t - i) w_i / (1 - d**t), written out (counts: the last iterate's)
    t = len(iterates)
    norm = 1 - decay ** t
    expected = {k: v.clone() if not v.is_floating_point() else
                sum((1 - decay) * decay ** (t - i) * w[k] for i, w in enumerate(iterates, 1)) / norm
                for k, v in iterates[-1].items()}
    averaged = train(*prepared, dataclasses.replace(TINY, ema_decay=decay), tmp_path,
                     progress=False)
    got = averaged.model.state_dict()
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.allclose(got[k].float(), expected[k].float(), atol=1e-6), k
    # the average is not the last iterate, and the losses are the raw run's
    assert any(not torch.allclose(got[k].float(), iterates[-1][k].float(), atol=1e-4)
               for k in got if got[k].is_floating_point())
    model, card = load_model(tmp_path / "model.pt")
    assert card.ema_decay == decay
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), got.values()))


def test_ema_resume_is_identical_and_old_runs_resume_without_it(prepared, tmp_path):
    cfg = dataclasses.replace(TINY, ema_decay=0.9)
    straight = train(*prepared, cfg, tmp_path / "a", progress=False)
    train(*prepared, dataclasses.replace(cfg, iterations=2), tmp_path / "b", progress=False)
    resumed = train(*prepared, cfg, tmp_path / "b", resume=True, progress=False)
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), name
    # a run saved before ema_decay existed (no such key in its sidecar) had no average: it
    # resumes without one, and refuses a config that asks for one
    raw = dataclasses.replace(TINY, ema_decay=0.0)
    train(*prepared, dataclasses.replace(raw, iterations=2), tmp_path / "old", progress=False)
    sidecar = tmp_path / "old" / "checkpoint.json"
    saved = json.loads(sidecar.read_text())
    del saved["config"]["ema_decay"]
    sidecar.write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="ema_decay"):
        train(*prepared, cfg, tmp_path / "old", resume=True, progress=False)
    assert train(*prepared, raw, tmp_path / "old", resume=True, progress=False).losses == \
        pytest.approx(straight.losses, rel=1e-5)  # the raw trajectory is the averaged run's
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_config_validation_and_size_mismatch(prepared):
    with pytest.raises(ConfigError, match="iterations"):
        TrainConfig(iterations=0)
    wrong = TrainConfig.from_dict({**TINY.to_dict(), "preprocess": {"size_zyx": [8, 32, 32]}})
    with pytest.raises(ConfigError, match="working size"):
        train(*prepared, wrong, None, progress=False)


def test_load_model_rejects_weights_of_another_architecture(tmp_path):
    model = build_network(NetConfig(base_channels=4))
    save_model(model, ModelCard(net=NetConfig(base_channels=4)), tmp_path / "m.pt")
    ModelCard(net=NetConfig(base_channels=8)).to_json(tmp_path / "m.json")
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "m.pt")
    (tmp_path / "m.json").unlink()
    with pytest.raises(CheckpointError, match="card"):
        load_model(tmp_path / "m.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    ModelCard(net=NetConfig(base_channels=4)).to_json(tmp_path / "bad.json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "bad.pt")


def test_atomic_writes_respect_the_umask_and_keep_existing_modes(tmp_path):
    import os

    from iunet_nb.io._atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
        (tmp_path / "kept.json").write_text("x")
        os.chmod(tmp_path / "kept.json", 0o640)
        atomic_write_text(tmp_path / "kept.json", "{}")
        assert (tmp_path / "kept.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_liver_spleen_contact_grows_only_the_first_maps(tmp_path, monkeypatch):
    import SimpleITK as sitk

    from iunet_nb import synth

    arr = np.zeros((20, 30, 40), np.uint8)
    arr[5:15, 8:22, 2:14] = synth.BTCV["liver"]
    arr[5:15, 8:22, 19:30] = synth.BTCV["spleen"]
    for i in range(3):
        image = sitk.GetImageFromArray(arr)
        image.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(image, str(tmp_path / f"{i + 1:04d}.nii.gz"))
    # the CT is the label map itself: what reaches synthesis is what is checked
    configs = []

    def fake_synthesize_ct(labels, rng, config):
        configs.append(config)
        return labels.with_array(labels.array.astype(np.float32))

    monkeypatch.setattr(synth, "synthesize_ct", fake_synthesize_ct)
    cases, desc = load_training_cases(f"btcv-synth:{tmp_path}", structure="liver",
                                      liver_spleen_contact=1.0, augment_first=2)
    n_liver = int((arr == synth.BTCV["liver"]).sum())
    grown = [int(mask.array.sum()) for _, mask in cases]
    assert grown[0] > n_liver and grown[1] > n_liver and grown[2] == n_liver
    assert "liver grown to the spleen with probability 1 in the first 2" in desc
    plain, _ = load_training_cases(f"btcv-synth:{tmp_path}", structure="liver")
    assert all(int(m.array.sum()) == n_liver for _, m in plain)
    with pytest.raises(ConfigError, match="liver_spleen_contact"):
        load_training_cases(f"btcv-synth:{tmp_path}", structure="liver", liver_spleen_contact=2)
    # the generator's parameters reach every synthesis (defaults unless given)
    assert len(configs) == 6 and all(c == synth.SynthConfig() for c in configs)
    brighter_fat = dataclasses.replace(synth.SynthConfig(), fat_hu=(-100.0, -50.0))
    load_training_cases(f"btcv-synth:{tmp_path}", structure="liver", synth_config=brighter_fat)
    assert configs[6:] == [brighter_fat] * 3


def test_init_from_starts_from_a_models_weights_with_a_fresh_optimizer(prepared, tmp_path):
    source = train(*prepared, TINY, tmp_path / "source", progress=False)
    # with zero learning progress (1 iteration at a tiny rate) the start weights show through
    slow = TrainConfig.from_dict({**TINY.to_dict(), "iterations": 1, "lr": 1e-9, "ema_decay": 0})
    tuned = train(*prepared, slow, tmp_path / "tuned", progress=False,
                  init_from=tmp_path / "source" / "model.pt")
    fresh = train(*prepared, slow, None, progress=False)
    src = source.model.state_dict()
    near = [torch.allclose(src[k].float(), v.float(), atol=1e-6)
            for k, v in tuned.model.state_dict().items() if "running" not in k and "num_batches" not in k]
    assert all(near)
    assert not all(torch.allclose(src[k].float(), v.float(), atol=1e-6)
                   for k, v in fresh.model.state_dict().items() if v.is_floating_point())
    # a fresh run: the iteration count starts at 1, not at the source's 4
    lines = (tmp_path / "tuned" / "loss.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1]
    other = TrainConfig.from_dict({**slow.to_dict(), "net": {**slow.net.to_dict(),
                                                            "base_channels": 8}})
    with pytest.raises(ConfigError, match="init_from"):
        train(*prepared, other, None, progress=False, init_from=tmp_path / "source" / "model.pt")


def test_parse_phases_and_randomised_cases_draw_phases_reproducibly():
    from iunet_nb.model.train import parse_phases, randomised_cases

    names, p = parse_phases("portal_venous:3,arterial")
    assert names == ["portal_venous", "arterial"] and p == pytest.approx([0.75, 0.25])
    with pytest.raises(ConfigError, match="unknown contrast phase"):
        parse_phases("venous:1")
    with pytest.raises(ConfigError, match="positive"):
        parse_phases("arterial:0")
    counts: dict[str, int] = {}
    first = list(randomised_cases([], 1, 1, 5, parse_phases("arterial"), True, counts))
    again = list(randomised_cases([], 1, 1, 5, parse_phases("arterial"), True))
    assert counts == {"arterial": 1} and len(first) == 1
    np.testing.assert_array_equal(first[0][0].array, again[0][0].array)
    assert first[0][1].array.any()


def test_bfloat16_training_learns_and_keeps_float32_weights(ellipsoid_case):
    from iunet_nb.model.checkpoint import autocast_dtype

    # 24 voxels a side: the deepest level of the depth-4 iUnet has 3 (smaller ones run float32)
    cfg = dataclasses.replace(TINY, preprocess=PreprocessConfig(size_zyx=(24, 24, 24)),
                              iterations=30, lr=1e-2, precision="bfloat16")
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "bfloat16", deepest_zyx=(3, 3, 3)) is torch.bfloat16
    assert autocast_dtype(cpu, "bfloat16", deepest_zyx=(1, 2, 2)) is None
    ct, mask = ellipsoid_case
    result = train(*prepare_cases([(ct, mask), (ct, mask)], cfg.preprocess), cfg, None,
                   progress=False)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert np.isfinite(result.losses).all()
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.05
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig(precision="float16")
