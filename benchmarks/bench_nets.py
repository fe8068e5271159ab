"""Timings of the segmentation networks: inference, a training step, and a refine iteration.

Usage::

    python benchmarks/bench_nets.py --threads 2 --repeats 5
    python benchmarks/bench_nets.py --arch cicek --device cuda

Each row is the median of ``--repeats`` runs after one warm-up run. The refine rows compare
one iteration of the interactive loop (forward, softmax, eq. 3 loss, backward, Adam step on
the two trainable layers) through the plain ``forward`` ("naive") and through the cached
``decode_trainable(encode_frozen(x))`` path, in the same process; the ratio column is
relative to the naive refine iteration.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from iunet_nb.losses import interactive_loss, one_hot, soft_dice_loss
from iunet_nb.nets import ARCHITECTURES, NetConfig, build_network, count_parameters


def _median_s(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _median_interleaved(fns: list[Callable[[], object]], repeats: int,
                        device: torch.device) -> list[float]:
    """Median time of each function, run in turn (a, b, a, b, ...) after one warm-up each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            acc.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> list[tuple[str, float, float | None]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (5)")
    parser.add_argument("--refine-repeats", type=int, default=20,
                        help="timed refine iterations per path, interleaved (20)")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="iunet")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="training batch size (8)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    cfg = NetConfig(arch=args.arch, base_channels=args.base_channels)
    net = build_network(cfg).to(device)
    rows: list[tuple[str, float, float | None]] = []

    # -- inference ---------------------------------------------------------------------------
    net.eval()
    for shape in ((1, 1, 24, 64, 64), (1, 1, 48, 128, 128)):
        x = torch.randn(shape, generator=g).to(device)

        def infer(x=x) -> None:
            with torch.no_grad():
                net(x)

        rows.append((f"forward eval {'x'.join(map(str, shape))}",
                     _median_s(infer, args.repeats, device), None))

    # -- one training step ---------------------------------------------------------------------
    net.train()
    xb = torch.randn((args.batch, 1, 24, 64, 64), generator=g).to(device)
    yb = one_hot((torch.rand((args.batch, 24, 64, 64), generator=g) > 0.7).long(),
                 cfg.n_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = soft_dice_loss(torch.softmax(net(xb), dim=1), yb)
        loss.backward()
        opt.step()

    rows.append((f"train step batch {args.batch} 24x64x64 (dice, Adam)",
                 _median_s(train_step, args.repeats, device), None))

    # -- refine iterations: naive vs cached ----------------------------------------------------
    net.eval()
    params = net.freeze_for_refinement()
    x1 = torch.randn((1, 1, 24, 64, 64), generator=g).to(device)
    target = one_hot((torch.rand((1, 24, 64, 64), generator=g) > 0.7).long(),
                     cfg.n_classes).to(device)
    weight = torch.ones((1, 24, 64, 64), device=device)
    ropt = torch.optim.Adam(params, lr=1e-4)

    def refine(logits_fn: Callable[[], torch.Tensor]) -> None:
        ropt.zero_grad(set_to_none=True)
        loss = interactive_loss(torch.softmax(logits_fn(), dim=1), target, weight, lam=0.5)
        loss.backward()
        ropt.step()

    encode = _median_s(lambda: net.encode_frozen(x1), args.repeats, device)
    state = net.encode_frozen(x1)
    # Interleaved, so that load from other processes hits both paths alike.
    naive, cached = _median_interleaved(
        [lambda: refine(lambda: net(x1)), lambda: refine(lambda: net.decode_trainable(state))],
        args.refine_repeats, device)
    rows.append(("refine iteration naive (forward)", naive, 1.0))
    rows.append(("refine: encode_frozen once", encode, encode / naive))
    rows.append(("refine iteration cached (decode_trainable)", cached, cached / naive))

    print(f"# {args.arch} base {args.base_channels}: {count_parameters(net):,} parameters, "
          f"{sum(p.numel() for p in params):,} trainable in refinement; device {device}, "
          f"{args.threads} threads, torch {torch.__version__}, {platform.processor() or '?'}; "
          f"median of {args.repeats} ({args.refine_repeats} for refine)")
    print(f"{'what':<48} {'median ms':>10} {'x naive':>8}")
    for name, sec, ratio in rows:
        rtxt = f"{ratio:8.2f}" if ratio is not None else " " * 8
        print(f"{name:<48} {sec * 1e3:10.1f} {rtxt}")
    print(f"cached refine saves {100 * (1 - cached / naive):.0f} % per iteration")
    return rows


if __name__ == "__main__":
    main()
