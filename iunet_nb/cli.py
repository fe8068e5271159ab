"""``iunet-nb``: the command-line face of the engine (the same functions the notebooks call)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from .errors import IunetError
from .interactive.edges import EDGE_WEIGHT

__all__ = ["main"]

logger = logging.getLogger("iunet_nb")

# Modules that register their own subcommands with ``add_cli(subparsers)``; the logic stays in
# the module, next to the functions the notebooks call.
_CLI_MODULES: tuple[str, ...] = ("studies.crossval", "studies.study", "studies.simstudy",
                                 "interactive.robot", "systems", "interactive.session_cli")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(args.out, device=args.device)
    m = result["metrics"]
    print(f"Segmented the bundled sample CT in {result['segment_s']:.2f} s "
          "(box from the reference mask, as in the paper's Experiment 1).")
    print(f"DSC {m['dice']:.3f}  Jaccard {m['jaccard']:.3f}  precision {m['precision']:.3f}  "
          f"recall {m['recall']:.3f}  HD95 {m['hd95_mm']:.1f} mm  "
          f"NSD@2mm {m['surface_dice']:.3f}")
    for name, path in result["files"].items():
        print(f"  {name:10s} {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """Train; under torchrun every process runs this and :func:`train` makes them one DDP job."""
    from .model.augment import AugmentConfig
    from .model.distributed import check_divisible, get_world_size, is_main
    from .model.nets import NetConfig
    from .model.preprocess import PreprocessConfig
    from .model.train import TrainConfig, load_training_cases, prepare_cases, train

    if not is_main():  # one voice per job: rank 0 logs and prints
        logging.getLogger("iunet_nb").setLevel(logging.WARNING)
    check_divisible(args.batch, get_world_size())  # before loading any data
    init_from = None
    if args.init_from is None:
        net = NetConfig(arch=args.arch if args.arch is not None else "iunet",
                        base_channels=16 if args.base_channels is None else args.base_channels)
        preprocess = PreprocessConfig(size_zyx=(24, 64, 64) if args.size is None
                                      else tuple(args.size))
    else:
        # fine-tuning: the network and the preprocessing are the start model's (its card), or
        # the weights would meet another input than the one they learned
        from .errors import ConfigError
        from .model.checkpoint import bundled_model_path, load_model

        given = [f"--{k.replace('_', '-')}" for k in ("arch", "base_channels", "size")
                 if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"--init-from takes the network and working size from the start "
                              f"model's card; drop {', '.join(given)}")
        init_from = bundled_model_path() if args.init_from == "bundled" else Path(args.init_from)
        _, card = load_model(init_from)
        net, preprocess = card.net, card.preprocess
    cfg = TrainConfig(
        net=net, preprocess=preprocess,
        augment=AugmentConfig(), iterations=args.iterations, batch_size=args.batch,
        lr=args.lr, seed=args.seed, structure=str(args.structure),
        checkpoint_every=min(args.checkpoint_every, args.iterations), precision=args.precision,
        **({} if args.ema_decay is None else {"ema_decay": args.ema_decay}))
    cases, description = load_training_cases(args.data, structure=args.structure,
                                              layout=args.layout, limit=args.limit,
                                              seed=args.seed)
    images, masks = prepare_cases(cases, cfg.preprocess)
    result = train(images, masks, cfg, args.out, resume=args.resume, device=args.device,
                   init_from=init_from, data_description=description)
    if is_main():
        print(f"trained {cfg.net.arch} for {cfg.iterations} iterations on {len(cases)} cases; "
              f"final loss {result.losses[-1]:.4f}; model in {Path(args.out) / 'model.pt'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .io.images import check_same_grid, hu_problem, read_image, read_mask, write_mask
    from .io.paths import check_output
    from .io.volume import Volume
    from .model.checkpoint import load_bundled_model, load_model
    from .model.evaluate import evaluate_case
    from .model.predict import make_box, segment
    from .model.preprocess import Box
    from .plots import plot_overview
    from .systems.autobox import find_box

    inputs = {"CT": args.ct, "model": args.model, "--box-from mask": args.box_from,
              "reference mask": args.reference}
    check_output(args.out, inputs, what="--out")
    if args.png:
        check_output(args.png, {**inputs, "mask of --out": args.out}, what="--png")
    ct = read_image(args.ct)
    problem = hu_problem(ct.array, args.ct)
    if problem is not None:  # the mask would come out empty or wrong: stop before the work
        raise InputError(problem)
    model, card = load_model(args.model) if args.model else load_bundled_model()

    def segment_in(box: Box) -> Volume:
        return segment(ct, model, box, card.preprocess, device=args.device,
                       edge_weight=args.edge_weight)

    reference = read_mask(args.reference) if args.reference else None
    if reference is not None:  # before any work, as evaluate does
        check_same_grid(ct, reference, "reference mask")
    if args.auto_box:
        if card.structure != "pancreas":
            raise InputError(f"--auto-box needs a pancreas model (the only automatic detector "
                             f"shipped is for the pancreas); this model is for "
                             f"'{card.structure}': give --box, --box-mm or --box-from")
        check = find_box(ct, lambda b: segment_in(b).array)
        box = check.box
        print(f"automatic box (z0 y0 x0 z1 y1 x1): "
              f"{' '.join(str(v) for v in (*box.lo_zyx, *box.hi_zyx))}")
        if check.unsure:  # still segment (exit 0), but never a silent wrong answer
            print(f"warning: the automatic box is probably wrong ({check.summary()}); check "
                  f"the mask, or draw the box and pass --box Z0 Y0 X0 Z1 Y1 X1 (or --box-mm)",
                  file=sys.stderr)
    else:
        box_ref = read_mask(args.box_from) if args.box_from else None
        box = make_box(ct, voxel=args.box, physical_mm=args.box_mm, reference=box_ref)
    mask = segment_in(box)
    out = write_mask(mask, args.out)
    print(f"mask written to {out} ({int(mask.array.sum())} voxels)")
    if args.png:
        try:
            plot_overview(ct, mask, reference, args.png)
        except OSError as exc:
            raise InputError(f"cannot write the overview {args.png} ({exc.strerror or exc}); "
                             f"choose a folder you can write to (the mask {out} was written)"
                             ) from exc
        print(f"overview written to {args.png}")
    if reference is not None:
        metrics = evaluate_case(mask.array, reference.array, ct.spacing_mm)
        print(json.dumps(metrics, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .io.images import check_same_grid, read_mask
    from .model.evaluate import evaluate_case

    pred, ref = read_mask(args.prediction), read_mask(args.reference)
    check_same_grid(pred, ref, what="prediction")
    metrics = evaluate_case(pred.array, ref.array, ref.spacing_mm, tolerance_mm=args.tolerance_mm)
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_lab(args: argparse.Namespace) -> int:
    from .widgets import launch_lab

    return launch_lab(args.directory, port=args.port, open_browser=not args.no_browser,
                      token=args.token)


def _cmd_app(args: argparse.Namespace) -> int:
    from .widgets import launch_app

    return launch_app(args.ct, model=args.model, reader=args.reader, sessions=args.sessions,
                      study=args.study, method=args.method, view3d=args.view3d,
                      port=args.port, open_browser=not args.no_browser, token=args.token,
                      announce=lambda url: print(f"the annotator is at {url}", flush=True))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="iunet-nb", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="segment the bundled sample CT and print its DSC")
    d.add_argument("--out", default="iunet-nb-demo", help="output folder (default %(default)s)")
    d.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train a network (paper schedule by default); under "
                                     "torchrun: one model, DistributedDataParallel")
    t.add_argument("--data", required=True,
                   help="a data folder (MSD, paired images/labels, 3D-IRCADb) or "
                        "'btcv-synth:<folder of BTCV label maps>' or 'phantom:<n cases>'")
    t.add_argument("--layout", default="auto", help="msd | paired | ircadb | auto")
    t.add_argument("--structure", default="pancreas", help="target structure, name or label value")
    t.add_argument("--out", required=True, help="output folder for checkpoints and model")
    t.add_argument("--arch", default=None, choices=["iunet", "cicek", "dilated_fcn"],
                   help="the network (default iunet)")
    t.add_argument("--base-channels", type=int, default=None, help="default 16")
    t.add_argument("--size", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="working size (default: the paper's 24 64 64)")
    t.add_argument("--init-from", default=None, metavar="MODEL",
                   help="fine-tune: start from this model.pt (with its card), or 'bundled' for "
                        "the shipped pancreas model; its network and working size are used")
    t.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "auto"],
                   help="arithmetic of the training passes (auto: bfloat16 on a CPU that has it "
                        "in hardware, 2-3x faster there; default float32)")
    t.add_argument("--iterations", type=int, default=2000)
    t.add_argument("--batch", type=int, default=8,
                   help="global batch size (split over the processes under torchrun)")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--ema-decay", type=float, default=None,
                   help="save the moving average of the weights with this decay; 0: the last "
                        "iteration's weights (default: TrainConfig.ema_decay)")
    t.add_argument("--limit", type=int, default=None, help="use at most this many cases")
    t.add_argument("--checkpoint-every", type=int, default=100)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--device", default=None)
    t.set_defaults(func=_cmd_train)

    r = sub.add_parser("predict", help="segment a CT inside a box; mask in the CT's geometry")
    r.add_argument("ct", help="CT: NIfTI, NRRD, MHA, a DICOM folder or a .zip of one")
    r.add_argument("--out", required=True, help="mask path (.nii.gz, .nii, .nrrd, .mha)")
    r.add_argument("--model", default=None, help="model.pt with its model.json (default: bundled)")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--box", type=int, nargs=6, metavar=("Z0", "Y0", "X0", "Z1", "Y1", "X1"),
                   help="voxel box, upper bounds exclusive")
    g.add_argument("--box-mm", type=float, nargs=6, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
                   help="two opposite corners in physical mm (LPS)")
    g.add_argument("--box-from", metavar="MASK", help="use the bounding box of this mask")
    g.add_argument("--auto-box", action="store_true",
                   help="find the box automatically (pancreas models: the bundled detector's "
                        "box, settled around the model's own mask in it)")
    r.add_argument("--reference", default=None, help="reference mask: print metrics")
    r.add_argument("--png", default=None, help="write an overview PNG here")
    r.add_argument("--edge-weight", type=float, default=EDGE_WEIGHT,
                   help="weight of the CT's own edges in placing the boundary (default "
                        f"{EDGE_WEIGHT}; 0: the network's probability thresholded alone)")
    r.add_argument("--device", default=None)
    r.set_defaults(func=_cmd_predict)

    e = sub.add_parser("evaluate", help="metrics of a mask against a reference")
    e.add_argument("prediction")
    e.add_argument("reference")
    e.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance")
    e.set_defaults(func=_cmd_evaluate)

    lab = sub.add_parser("lab", help="open JupyterLab on the annotate notebook (bundled sample)")
    lab.add_argument("directory", nargs="?", default=".", help="folder to serve (default: .)")
    lab.add_argument("--port", type=int, default=None)
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser")
    lab.add_argument("--token", default=None,
                     help="the server's token (default: JupyterLab makes one and prints the "
                          "URL with it); as root --allow-root is added by itself")
    lab.set_defaults(func=_cmd_lab)

    app = sub.add_parser("app", help="serve the annotator as a web app with Voila (only the "
                                     "app, no code; needs the view extra)")
    app.add_argument("ct", nargs="?", default=None,
                     help="CT file, DICOM folder or data-set folder (default: the bundled sample)")
    app.add_argument("--model", default=None, help="model.pt with its model.json (default: "
                                                   "the bundled pancreas iUnet)")
    app.add_argument("--reader", default=None, help="reader id (reader mode, in the event log)")
    app.add_argument("--sessions", default="sessions",
                     help="session folder: autosave, events.jsonl, masks (default %(default)s)")
    app.add_argument("--study", action="store_true",
                     help="study mode: the status line shows the running case time")
    app.add_argument("--method", default="interactive", choices=["interactive", "manual"])
    app.add_argument("--view3d", default="auto", choices=["auto", "niivue", "itk", "none"])
    app.add_argument("--port", type=int, default=None,
                     help="server port (default: the first free one from 8866 on)")
    app.add_argument("--token", default=None,
                     help="the page's token (default: a random one, printed with the address; "
                          "'' serves without a token, only on a machine no one else uses)")
    app.add_argument("--no-browser", action="store_true", help="do not open a browser")
    app.set_defaults(func=_cmd_app)

    for name in _CLI_MODULES:
        importlib.import_module(f"iunet_nb.{name}").add_cli(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iunet-nb`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except IunetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file problem not turned into an IunetError where it happened
        logger.debug("%s failed", args.command, exc_info=True)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; check the path, its permissions and the "
              "free disk space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
