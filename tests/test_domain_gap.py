"""Domain-gap table: held-out synthetic rows and real rows, DSC computed from predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_ellipsoid

import iunet_nb.synth.domain_gap as dg
from iunet_nb.errors import ConfigError, InputError
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.nets import NetConfig
from iunet_nb.model.preprocess import PreprocessConfig
from iunet_nb.model.train import TrainConfig

TINY = TrainConfig(net=NetConfig(base_channels=4), preprocess=PreprocessConfig(size_zyx=(8, 16, 16)),
                   iterations=2, batch_size=2, lr=1e-3, seed=0, checkpoint_every=1,
                   structure="liver")


def _case(seed: int, organ_hu: float = 120.0) -> tuple[Volume, Volume]:
    rng = np.random.default_rng(seed)
    g = Geometry(spacing_mm=(2.5, 0.8, 0.7), origin_mm=(0.0, 0.0, 0.0))
    mask = make_ellipsoid((12, 24, 24), radii=(3.0 + seed % 2, 6.0, 7.0))
    ct = np.full(mask.shape, -50.0, dtype=np.float32)
    ct[mask > 0] = organ_hu
    ct += rng.normal(0, 10, size=ct.shape).astype(np.float32)
    return Volume(ct, g), Volume(mask, g)


@pytest.fixture
def cases():
    synthetic = [_case(i) for i in range(4)]
    real = [_case(10, organ_hu=90.0), _case(11, organ_hu=90.0)]
    return synthetic, ["s0", "s1", "s2", "s3"], real, ["1.17", "1.7"]


def test_table_rows_and_csv(cases, tmp_path):
    synthetic, sids, real, rids = cases
    table = dg.domain_gap_from_cases(synthetic, sids, real, rids, train_config=TINY, n_val=2,
                                     out_dir=tmp_path)
    assert list(table.columns) == list(dg.COLUMNS)
    assert table["domain"].tolist() == ["synthetic", "synthetic", "real", "real"]
    assert table["case_id"].tolist() == ["s2", "s3", "1.17", "1.7"]   # last n_val held out
    assert (table["structure"] == "liver").all()
    assert table["ref_voxels"].tolist() == [int(m.array.sum()) for _, m in synthetic[2:] + real]
    assert table["dsc"].between(0, 1).all()
    written = pd.read_csv(tmp_path / "domain_gap_liver.csv", dtype={"case_id": str})
    assert written["case_id"].tolist() == table["case_id"].tolist()
    np.testing.assert_allclose(written["dsc"], table["dsc"], atol=1e-4)
    assert (tmp_path / "train" / "checkpoint.pt").is_file()


def test_dsc_comes_from_the_prediction(cases, monkeypatch):
    # replace the network's prediction by the reference plus one extra slice: the DSC is then
    # known by hand, 2|R| / (|R| + |R| + |extra|)
    synthetic, sids, real, rids = cases

    def fake_segment(ct, model, box, cfg):
        ref = next(m for c, m in synthetic + real if c is ct).array
        pred = ref.copy()
        z = int(np.nonzero(ref.any(axis=(1, 2)))[0].max()) + 1
        pred[z] = ref[z - 1]
        return Volume(pred, ct.geometry)

    monkeypatch.setattr(dg, "segment", fake_segment)
    table = dg.domain_gap_from_cases(synthetic, sids, real, rids, train_config=TINY, n_val=1)
    for (_, ref), (_, row) in zip(synthetic[3:] + real, table.iterrows()):
        r = int(ref.array.sum())
        extra = int(ref.array[int(np.nonzero(ref.array.any(axis=(1, 2)))[0].max())].sum())
        assert row["dsc"] == pytest.approx(2 * r / (2 * r + extra))
        assert row["pred_voxels"] == r + extra
        assert row["dsc"] < 1.0


@pytest.mark.parametrize("n_val", [0, 4, 2.0, True])
def test_bad_n_val(cases, n_val):
    synthetic, sids, real, rids = cases
    with pytest.raises(ConfigError, match="n_val must be an integer from 1 to 3"):
        dg.domain_gap_from_cases(synthetic, sids, real, rids, train_config=TINY, n_val=n_val)


def test_mismatched_ids(cases):
    synthetic, sids, real, rids = cases
    with pytest.raises(InputError, match="4 synthetic cases but 3 ids"):
        dg.domain_gap_from_cases(synthetic, sids[:3], real, rids, train_config=TINY, n_val=1)


def test_missing_btcv_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist or is not a folder"):
        dg.domain_gap("liver", tmp_path / "nothing", tmp_path / "nothing", train_config=TINY)


def test_btcv_folder_without_label_maps(tmp_path):
    (tmp_path / "btcv").mkdir()
    (tmp_path / "btcv" / "notes.txt").write_text("no label maps here")
    with pytest.raises(InputError, match="no cases found in .* with layout 'btcv'"):
        dg.domain_gap("liver", tmp_path / "btcv", tmp_path / "nothing", train_config=TINY)


@pytest.mark.parametrize("limit", [0, 1, 2.5])
def test_bad_limit(tmp_path, limit):
    with pytest.raises(ConfigError, match="limit must be None or an integer >= 2"):
        dg.domain_gap("liver", tmp_path, tmp_path, train_config=TINY, limit=limit)


def test_reorient_lps_flips_btcv_direction_and_keeps_physical_points():
    g = Geometry(spacing_mm=(2.0, 1.0, 1.5), origin_mm=(10.0, 20.0, 30.0),
                 direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    a = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    v = Volume(a, g, {"case_id": "x"})
    out = dg.reorient_lps(v)
    np.testing.assert_allclose(out.geometry.direction, np.eye(3).ravel())
    np.testing.assert_array_equal(out.array, a[:, ::-1, ::-1])   # x and y reversed, z kept
    assert out.array.dtype == np.int16 and out.meta["case_id"] == "x"
    # the voxel holding value a[1, 2, 3] sits at the same physical point before and after
    k = np.argwhere(out.array == a[1, 2, 3])[0]
    np.testing.assert_allclose(out.geometry.index_to_physical(k), g.index_to_physical((1, 2, 3)))
    same = Volume(a, Geometry(spacing_mm=(2.0, 1.0, 1.5), origin_mm=(0.0, 0.0, 0.0)))
    assert dg.reorient_lps(same) is same


def test_btcv_direction_flips_only_y():
    # the shared BTCV maps run x right-to-left (as LPS) and y posterior-to-anterior (against
    # LPS): read with their true direction (now set by iunet_nb.io.datasets, re-exported here),
    # only y is reversed on the way to LPS
    from iunet_nb.io.datasets import BTCV_DIRECTION, with_true_direction

    assert dg.BTCV_DIRECTION is BTCV_DIRECTION
    header = Geometry(spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 0.0),
                      direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    fixed = with_true_direction(Volume(a, header), dg.BTCV_DIRECTION)
    np.testing.assert_array_equal(dg.reorient_lps(fixed).array, a[:, ::-1, :])


BTCV = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("given, expected", [((), BTCV), ((None,), None)])
def test_domain_gap_reads_btcv_with_the_true_direction_unless_told_otherwise(
        monkeypatch, tmp_path, given, expected):
    # the reorientation workaround is gone: the direction goes to the BTCV readers, and the
    # synthetic cases reach domain_gap_from_cases as loaded (preprocess handles orientation)
    import iunet_nb.io.datasets as ds

    seen: dict = {}
    synthetic = [_case(i) for i in range(3)]

    def fake_find(root, structure, layout="auto", *, btcv_direction=ds.BTCV_DIRECTION):
        seen.setdefault(layout, []).append(btcv_direction)
        return [] if layout == "ircadb" else [ds.Case(f"{i:04d}", None, "x", 6, "btcv", "liver",
                                                      btcv_direction) for i in range(3)]

    def fake_load(data, **kw):
        seen["load"] = kw["btcv_direction"]
        seen["contact"] = (kw["liver_spleen_contact"], kw["augment_first"])
        return synthetic, "fake"

    def fake_from_cases(syn, sids, real, rids, **kw):
        seen["synthetic"] = syn
        return pd.DataFrame()

    monkeypatch.setattr(ds, "find_cases", fake_find)
    monkeypatch.setattr(dg, "load_training_cases", fake_load)
    monkeypatch.setattr(dg, "domain_gap_from_cases", fake_from_cases)
    kwargs = {"btcv_direction": given[0]} if given else {}
    dg.domain_gap("liver", tmp_path, tmp_path, train_config=TINY, n_val=1,
                  liver_spleen_contact=0.5, **kwargs)
    assert seen["btcv"] == [expected] and seen["load"] == expected
    # the anatomical augmentation reaches the 2 training maps only, not the held-out one
    assert seen["contact"] == (0.5, 2)
    assert all(c is s_c and m is s_m for (c, m), (s_c, s_m) in zip(seen["synthetic"], synthetic))

