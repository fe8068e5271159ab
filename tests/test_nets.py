"""Tests of iunet_nb.model.nets: shapes, input checks, the refinement contract, (de)serialisation."""

from __future__ import annotations

import pytest
import torch

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.model.nets import (
    ARCHITECTURES,
    CicekUNet3D,
    DilatedFCN3D,
    EncodedFeatures,
    IUNet,
    NetConfig,
    build_network,
    count_parameters,
)

SMALL = (1, 1, 24, 64, 64)


def _net(arch: str, base: int = 2, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(NetConfig(arch=arch, base_channels=base, **kw))


def _randomise_norm_stats(net: torch.nn.Module) -> None:
    # Non-trivial running statistics so eval mode is not the identity normalisation.
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_output_shape_at_working_size(arch):
    net = _net(arch).eval()
    x = torch.randn(*SMALL)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 2, 24, 64, 64)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_output_shape_more_classes_and_channels(arch):
    net = _net(arch, in_channels=2, n_classes=3, depth=3).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 2, 8, 16, 12))
    assert y.shape == (2, 3, 8, 16, 12)


def test_iunet_double_working_size():
    net = _net("iunet", base=2).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, 48, 128, 128))
    assert y.shape == (1, 2, 48, 128, 128)


def test_iunet_channels_follow_base_times_two_to_the_level():
    net = IUNet(NetConfig(base_channels=16, depth=4))
    assert [b[0].conv.out_channels for b in net.encoder] == [16, 32, 64]
    assert net.bottleneck2.conv.out_channels == 128
    assert [u.out_channels for u in net.ups] == [16, 32, 64]
    assert net.head.out_channels == 2 and net.head.kernel_size == (1, 1, 1)


def test_cicek_channel_plan_at_base_32_is_the_original():
    net = CicekUNet3D(NetConfig(arch="cicek", base_channels=32, depth=4))
    assert [(b[0].conv.out_channels, b[1].conv.out_channels) for b in net.encoder] == [
        (32, 64), (64, 128), (128, 256)]
    assert (net.bottleneck1.conv.out_channels, net.bottleneck2.conv.out_channels) == (256, 512)
    # Up-convolutions keep the channel count (512 -> 512, 256 -> 256, 128 -> 128).
    assert [(u.in_channels, u.out_channels) for u in net.ups] == [
        (128, 128), (256, 256), (512, 512)]
    # Synthesis convs: concat(up, skip) -> skip's channel count.
    assert [b[0].conv.in_channels for b in net.decoder] == [128 + 64, 256 + 128, 512 + 256]
    assert [b[1].conv.out_channels for b in net.decoder] == [64, 128, 256]


def test_dilated_fcn_dilations_and_no_downsampling():
    net = DilatedFCN3D(NetConfig(arch="dilated_fcn", base_channels=4, depth=4))
    dil = [layer.conv.dilation for block in net.blocks for layer in block]
    assert dil == [(1, 1, 1)] * 4 + [(2, 2, 2)] * 3 + [(4, 4, 4)] * 3 + [(4, 8, 8)] * 3
    assert all(layer.conv.padding == layer.conv.dilation for b in net.blocks for layer in b)
    assert not any(isinstance(m, (torch.nn.MaxPool3d, torch.nn.ConvTranspose3d))
                   for m in net.modules())


def test_count_parameters_matches_hand_count():
    net = IUNet(NetConfig(base_channels=2, depth=2))
    # level 0: conv 1->2 (54+2), BN 4, conv 2->2 (108+2), BN 4
    # bottleneck: conv 2->4 (216+4), BN 8, conv 4->4 (432+4), BN 8
    # up: ConvT 4->2 2x2x2 (64+2); decoder: conv 4->2 (216+2), BN 4, conv 2->2 (110), BN 4
    # head: 1x1x1 2->2 (4+2)
    expected = (56 + 4 + 110 + 4) + (220 + 8 + 436 + 8) + 66 + (218 + 4 + 110 + 4) + 6
    assert count_parameters(net) == expected == 1254
    net.freeze_for_refinement()
    assert count_parameters(net, trainable_only=True) == 436 + 6


@pytest.mark.parametrize("arch,shape,match", [
    ("iunet", (1, 1, 24, 64, 60), r"multiples of 8.*\(24, 64, 60\)"),
    ("iunet", (1, 1, 20, 64, 64), r"multiples of 8"),
    ("cicek", (1, 1, 4, 64, 64), r"multiples of 8"),
    ("iunet", (1, 2, 24, 64, 64), r"expects 1 input channel"),
    ("dilated_fcn", (1, 24, 64, 64), r"\(N, C, D, H, W\)"),
])
def test_bad_input_sizes_raise_input_error(arch, shape, match):
    net = _net(arch).eval()
    with pytest.raises(InputError, match=match):
        net(torch.zeros(shape))


def test_dilated_fcn_takes_any_size():
    net = _net("dilated_fcn").eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 7, 13, 11)).shape == (1, 2, 7, 13, 11)


@pytest.mark.parametrize("kwargs,match", [
    ({"arch": "unet"}, r"arch must be one of"),
    ({"norm": "group"}, r"norm must be one of"),
    ({"depth": 1}, r"depth must be between 2"),
    ({"depth": 7}, r"depth must be between 2"),
    ({"n_classes": 1}, r"n_classes must be >= 2"),
    ({"base_channels": 0}, r"base_channels must be >= 1"),
    ({"in_channels": 1.5}, r"in_channels must be an integer"),
    ({"depth": True}, r"depth must be an integer"),
    ({"version": 2}, r"version 2 is not supported"),
])
def test_net_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NetConfig(**kwargs)


def test_build_network_rejects_non_config():
    with pytest.raises(ConfigError, match="expects a NetConfig"):
        build_network({"arch": "iunet"})  # type: ignore[arg-type]


def test_net_config_json_round_trip(tmp_path):
    cfg = NetConfig(arch="dilated_fcn", in_channels=2, n_classes=3, base_channels=8, depth=3,
                    norm="instance")
    assert NetConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "net.json"
    cfg.to_json(path)
    assert NetConfig.from_json(path) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        NetConfig.from_dict({**cfg.to_dict(), "dropout": 0.5})


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_interactive_parameters_are_two_layers(arch):
    net = _net(arch)
    params = net.interactive_parameters()
    assert len(params) == 4
    deep_w, deep_b, last_w, last_b = params
    assert deep_w.ndim == 5 and deep_w.shape[2:] == (3, 3, 3)
    assert deep_b.shape == (deep_w.shape[0],)
    assert last_w.shape[:2] == (2, net.head.in_channels) and last_w.shape[2:] == (1, 1, 1)
    assert last_b.shape == (2,)
    assert last_w is net.head.weight
    deep_layer = net.bottleneck2.conv if arch != "dilated_fcn" else net.blocks[-1][-1].conv
    assert deep_w is deep_layer.weight and deep_b is deep_layer.bias
    if arch == "iunet":  # the bottleneck works at base * 2**(depth-1) channels
        assert deep_w.shape[:2] == (16, 16)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_freeze_for_refinement_and_backward_only_reach_the_tail(arch):
    net = _net(arch).eval()
    returned = net.freeze_for_refinement()
    ids = {id(p) for p in returned}
    assert ids == {id(p) for p in net.interactive_parameters()}
    for p in net.parameters():
        assert p.requires_grad == (id(p) in ids)
    loss = net(torch.randn(1, 1, 8, 16, 16)).square().mean()
    loss.backward()
    for name, p in net.named_parameters():
        if id(p) in ids:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    net.unfreeze_all()
    assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encode_decode_equals_forward_exactly(arch):
    net = _net(arch)
    _randomise_norm_stats(net)
    net.eval()
    x = torch.randn(*SMALL, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = net(x)
    state = net.encode_frozen(x)
    assert isinstance(state, EncodedFeatures)
    assert not state.h.requires_grad and not any(s.requires_grad for s in state.skips)
    out = net.decode_trainable(state)
    assert torch.equal(out, ref)
    # The state can be decoded again (nothing was modified in place).
    assert torch.equal(net.decode_trainable(state), ref)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_path_gives_the_same_gradients(arch):
    net = _net(arch).eval()
    params = net.freeze_for_refinement()
    x = torch.randn(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(4))
    net(x).sigmoid().mean().backward()
    naive = [p.grad.clone() for p in params]
    net.zero_grad(set_to_none=True)
    net.decode_trainable(net.encode_frozen(x)).sigmoid().mean().backward()
    for a, b in zip(naive, (p.grad for p in params)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_encode_frozen_does_not_touch_running_stats_in_eval():
    net = _net("iunet").eval()
    before = [b.clone() for b in net.buffers()]
    net.encode_frozen(torch.randn(1, 1, 8, 16, 16))
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))


def test_decode_trainable_rejects_other_objects():
    net = _net("iunet").eval()
    with pytest.raises(InputError, match="object returned by encode_frozen"):
        net.decode_trainable(torch.zeros(1, 16, 3, 8, 8))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_state_dict_round_trip_weights_only(arch, tmp_path):
    net = _net(arch)
    _randomise_norm_stats(net)
    net.eval()
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    torch.manual_seed(123)  # a differently initialised twin
    twin = build_network(net.cfg).eval()
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        assert not torch.equal(twin(x), net(x))
        twin.load_state_dict(torch.load(path, weights_only=True))
        assert torch.equal(twin(x), net(x))
    for (k1, v1), (k2, v2) in zip(net.state_dict().items(), twin.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_instance_norm_variant_trains():
    net = _net("iunet", norm="instance").train()
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())
    y = net(torch.randn(2, 1, 16, 16, 16))
    y.mean().backward()
    assert net.encoder[0][0].conv.weight.grad is not None
    with pytest.raises(InputError, match="1x1x1 bottleneck"):
        net(torch.randn(1, 1, 8, 8, 8))


def test_encode_frozen_in_training_mode_warns(caplog):
    net = _net("iunet").train()
    with caplog.at_level("WARNING", logger="iunet_nb.model.nets"):
        net.encode_frozen(torch.randn(1, 1, 8, 16, 16))
    assert "call model.eval()" in caplog.text
    caplog.clear()
    net.eval()
    with caplog.at_level("WARNING", logger="iunet_nb.model.nets"):
        net.encode_frozen(torch.randn(1, 1, 8, 16, 16))
    assert caplog.text == ""
