"""Timings of the segmentation networks: inference, a training step, and a refine iteration.

Usage::

    python benchmarks/bench_nets.py --threads 2 --repeats 5
    python benchmarks/bench_nets.py --arch cicek --device cuda

Each row is the median of ``--repeats`` runs after one warm-up run. The refine rows compare
one iteration of the interactive loop (forward, softmax, eq. 3 loss, backward, Adam step on
the two trainable layers) through the plain ``forward`` ("naive") and through the cached
``decode_trainable(encode_frozen(x))`` path, in the same process; the ratio column is
relative to the naive refine iteration.

With ``--tricks`` it also times the cached refine iteration under the other speed-ups the
interactive-engine issue names, each against plain float32 in the same process: the
``channels_last_3d`` memory format, bfloat16 autocast, and ``torch.compile`` (its first call,
the compilation, reported separately). The number of iterations is weighed by its DSC instead,
in ``bench_interactive.py sweep`` (``it3``, ``it10``).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch

from iunet_nb.model.losses import interactive_loss, one_hot, soft_dice_loss
from iunet_nb.model.nets import ARCHITECTURES, NetConfig, build_network, count_parameters


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
    parser.add_argument("--tricks", action="store_true",
                        help="also time channels_last_3d, bfloat16 autocast and torch.compile")
    parser.add_argument("--trick-repeats", type=int, default=3,
                        help="timed refine iterations per trick (3; bfloat16 can take seconds)")
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

    if args.tricks:
        rows.extend(_tricks(net, x1, target, weight, cached, args.trick_repeats, device))

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


def _tricks(net: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
            cached_s: float, repeats: int, device: torch.device
            ) -> list[tuple[str, float, float | None]]:
    """The cached refine iteration under each speed-up, interleaved with plain float32.

    Each variant gets its own copy of the network and optimiser (same weights), so a memory
    format or a compiled graph of one does not leak into another. Ratios are against the plain
    float32 iteration timed in the same loop (``cached_s``, from the rows above, is printed
    for reference only).
    """
    def make(variant: str) -> Callable[[], None]:
        net_v = copy.deepcopy(net).eval()
        params = net_v.freeze_for_refinement()
        xv = x
        if variant == "channels_last_3d":
            net_v = net_v.to(memory_format=torch.channels_last_3d)
            xv = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad():
            state = net_v.encode_frozen(xv)
        opt = torch.optim.Adam(params, lr=1e-4)
        decode = torch.compile(net_v.decode_trainable) if variant == "compile" \
            else net_v.decode_trainable

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            if variant == "bfloat16":
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    logits = decode(state)
                logits = logits.float()
            else:
                logits = decode(state)
            loss = interactive_loss(torch.softmax(logits, dim=1), target, weight, lam=0.5)
            loss.backward()
            opt.step()
        return step

    variants = ["float32", "channels_last_3d", "bfloat16", "compile"]
    steps, first = [], []
    for variant in variants:
        step = make(variant)
        t0 = time.perf_counter()
        try:
            step()  # warm-up; for compile, the compilation
        except Exception as exc:  # noqa: BLE001 - a measurement: report and go on
            print(f"{variant}: failed ({type(exc).__name__}: {exc})")
            step = None
        first.append(time.perf_counter() - t0)
        steps.append(step)
    live = [s for s in steps if s is not None]
    medians = iter(_median_interleaved(live, repeats, device))
    times = [next(medians) if s is not None else float("nan") for s in steps]
    base = times[0]
    rows = []
    for variant, sec, first_s in zip(variants, times, first):
        rows.append((f"refine cached, {variant}", sec, sec / base))
        if variant == "compile":
            rows.append(("  torch.compile's first call (compilation)", first_s, None))
    print(f"(float32 cached refine iteration in the rows above: {cached_s * 1e3:.1f} ms)")
    return rows


if __name__ == "__main__":
    main()
