"""CLI of the seed papers' systems: ``train-system``, ``predict-system``, ``detect-box``.

:func:`add_cli` adds the three subcommands to the ``iunet-nb`` parser::

    iunet-nb train-system zhou --data btcv-synth:../shared/data/btcv_labels --out runs/zhou
    iunet-nb predict-system zhou ct.nii.gz --model runs/zhou/model.pt --out mask.nii.gz
    iunet-nb predict-system roth ct.nii.gz --organ liver --out liver.nii.gz   # shipped model
    iunet-nb predict-system kloenne ct.nii.gz --out liver.nii.gz   # shipped liver model
    iunet-nb detect-box ct.nii.gz --model runs/zhou/model.pt      # prints Z0 Y0 X0 Z1 Y1 X1

``--scale reduced`` (default) uses each system's documented CPU scale, ``--scale full`` the
papers' settings; ``--config '{"iterations": 100}'`` overrides single fields.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from ..io.volume import Volume
from .cv import SYSTEMS

__all__ = ["SYSTEMS", "add_cli", "load_label_map_cases"]

logger = logging.getLogger(__name__)



def load_label_map_cases(data: str, *, limit: int | None = None, seed: int = 0,
                         layout: str = "auto") -> tuple[list[tuple[Volume, Volume]], str]:
    """``(CT, full label map)`` pairs for the multi-organ system, and a description.

    Sources: ``btcv-synth:<folder>`` (synthetic CT from each BTCV label map, case ``i``
    seeded ``seed + i``) or a folder in a :func:`iunet_nb.io.datasets.find_cases` layout whose
    label maps carry BTCV label values. BTCV label maps are read in their true orientation
    (:data:`iunet_nb.io.datasets.BTCV_DIRECTION`; their header mirrors x).

    Raises:
        InputError: no cases, or cases without images.
    """
    from .. import synth
    from ..io import datasets
    from ..io import images as io

    if data.startswith("btcv-synth:"):
        found = datasets.find_cases(data.split(":", 1)[1], "pancreas", layout="btcv")[:limit]
        out = []
        for i, case in enumerate(found):
            labels = case.read_labels()
            out.append((synth.synthesize_ct(labels, rng=seed + i), labels))
        return out, (f"synthetic CT from {len(out)} BTCV label maps, seeds "
                     f"{seed}..{seed + len(out) - 1}")
    found = datasets.find_cases(data, "pancreas", layout=layout)[:limit]
    out = []
    for case in found:
        if case.image_path is None:
            raise InputError(f"case {case.case_id} has no image; use 'btcv-synth:{data}'")
        image = io.read_image(case.image_path)
        labels = case.read_labels()
        if case.direction is not None:   # the btcv layout: the image's header is wrong too
            image = datasets.with_true_direction(image, case.direction)
        out.append((image, labels))
    return out, f"{len(out)} cases from {data}"


def _config(system: str, scale: str, overrides: str | None, seed: int) -> Any:
    from .kloenne import KloenneConfig
    from .roth import RothConfig
    from .zhou import ZhouConfig

    cls = {"zhou": ZhouConfig, "roth": RothConfig, "kloenne": KloenneConfig}[system]
    try:
        changes = json.loads(overrides) if overrides else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config must be a JSON object, e.g. '{{\"iterations\": 100}}': "
                          f"{exc}") from exc
    if not isinstance(changes, dict):
        raise ConfigError("--config must be a JSON object")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    changes.setdefault("seed", seed)
    if scale == "reduced":
        return cls.reduced(**changes)
    return cls(**changes)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..model.train import load_training_cases

    cfg = _config(args.system, args.scale, args.config, args.seed)
    if args.system == "roth":
        from .roth import train_roth

        cases, desc = load_label_map_cases(args.data, limit=args.limit, seed=args.seed,
                                           layout=args.layout)
        result = train_roth(cases, cfg, args.out, device=args.device, data_description=desc)
        final = result.losses[-1]
    else:
        cases, desc = load_training_cases(args.data, structure=args.structure,
                                          layout=args.layout, limit=args.limit, seed=args.seed)
        if args.system == "zhou":
            from .zhou import train_zhou

            result = train_zhou(cases, cfg, args.out, device=args.device, data_description=desc)
            final = float(np.mean([v[-1] for v in result.losses.values()]))
        else:
            from .kloenne import train_kloenne

            result = train_kloenne(cases, cfg, args.out, device=args.device,
                                   data_description=desc)
            final = result.losses[-1]
    print(f"trained {args.system} ({args.scale} scale) on {len(cases)} cases in "
          f"{result.train_time_s:.1f} s; final loss {final:.4f}; model in "
          f"{Path(args.out) / 'model.pt'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..io.images import read_image, read_mask, write_mask
    from ..model.evaluate import evaluate_case

    ct = read_image(args.ct)
    if args.system == "zhou":
        from .zhou import load_bundled_zhou, load_zhou, predict_zhou

        model_z = load_bundled_zhou(args.device) if args.model is None else \
            load_zhou(args.model, args.device)
        pred = predict_zhou(ct, model_z, device=args.device)
        mask = pred.mask
        print(f"zhou: {pred.iterations} fine iteration(s), inter-iteration DSC "
              f"{[round(d, 3) for d in pred.inter_iteration_dsc]}")
    elif args.system == "roth":
        from .roth import load_bundled_roth, load_roth, predict_roth

        model_r = load_bundled_roth(args.device) if args.model is None else \
            load_roth(args.model, args.device)
        if args.organ != "all":
            model_r.organ_label(args.organ)     # an organ the model lacks: say so before predicting
        pred_r = predict_roth(ct, model_r, device=args.device)
        mask = pred_r.labels if args.organ == "all" else pred_r.organ_mask(args.organ)
    else:
        from .kloenne import load_bundled_kloenne, load_kloenne, predict_kloenne

        model_k = load_bundled_kloenne(args.device) if args.model is None else \
            load_kloenne(args.model, args.device)
        mask = predict_kloenne(ct, model_k, device=args.device)
    out = write_mask(mask, args.out)
    print(f"mask written to {out} ({int(np.count_nonzero(mask.array))} voxels)")
    if args.reference:
        ref = read_mask(args.reference)
        print(json.dumps(evaluate_case(mask.array != 0, ref.array, ct.spacing_mm), indent=2))
    return 0


def _cmd_detect_box(args: argparse.Namespace) -> int:
    from ..io.images import read_image
    from .autobox import detect_box

    ct = read_image(args.ct)
    card = json.loads(Path(args.model).with_suffix(".json").read_text(encoding="utf-8")) \
        if Path(args.model).with_suffix(".json").is_file() else {}
    if card.get("system") == "roth":
        from .roth import load_roth

        model = load_roth(args.model, args.device)
        detector: Any = lambda v: model.organ_probability(v, args.device, organ=args.organ)
    else:
        from .zhou import load_zhou

        detector = load_zhou(args.model, args.device)
    box = detect_box(ct, detector, threshold=args.threshold, margin_mm=args.margin_mm,
                     device=args.device)
    print(" ".join(str(v) for v in (*box.lo_zyx, *box.hi_zyx)))
    return 0


def add_cli(subparsers: Any) -> None:
    """Add ``train-system``, ``predict-system`` and ``detect-box`` to an argparse subparsers
    object (``parser.add_subparsers()``); each sets ``func`` to its handler."""
    t = subparsers.add_parser("train-system", help="train Zhou, Roth or Kloenne's system")
    t.add_argument("system", choices=SYSTEMS)
    t.add_argument("--data", required=True,
                   help="data folder, 'btcv-synth:<BTCV label folder>' or 'phantom:<n>' "
                        "(roth: btcv-synth or label maps with BTCV values)")
    t.add_argument("--out", required=True, help="output folder (model.pt, model.json)")
    t.add_argument("--scale", choices=["reduced", "full"], default="reduced",
                   help="reduced: the documented CPU scale; full: the paper's settings")
    t.add_argument("--config", default=None, help="JSON object of config fields to override")
    t.add_argument("--structure", default="pancreas")
    t.add_argument("--layout", default="auto")
    t.add_argument("--limit", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None)
    t.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("predict-system", help="segment a CT with a trained system")
    p.add_argument("system", choices=SYSTEMS)
    p.add_argument("ct")
    p.add_argument("--model", default=None,
                   help="model.pt (with its model.json); default: the shipped model (roth: "
                        "multi-organ, zhou: the coarse-to-fine pancreas system, "
                        "kloenne: the liver)")
    p.add_argument("--out", required=True, help="mask path (.nii.gz, .nrrd, .mha)")
    p.add_argument("--organ", default="pancreas",
                   help="roth: organ to write (artery, vein, liver, spleen, stomach, "
                        "gallbladder, pancreas, right_kidney, left_kidney), or 'all' for the "
                        "label map")
    p.add_argument("--reference", default=None, help="reference mask: print metrics")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_predict)

    d = subparsers.add_parser("detect-box", help="automatic box for iUnet (prints Z0 Y0 X0 "
                                                 "Z1 Y1 X1 for `predict --box`)")
    d.add_argument("ct")
    d.add_argument("--model", required=True, help="a zhou (or roth) model.pt")
    d.add_argument("--organ", default="pancreas", help="roth only")
    d.add_argument("--threshold", type=float, default=0.3,
                   help="probability threshold (default %(default)s: the box iUnet does best in;"
                        " 0.1 with --margin-mm 10 favours containment)")
    d.add_argument("--margin-mm", type=float, default=0.0,
                   help="margin added on each side in mm (default %(default)s)")
    d.add_argument("--device", default=None)
    d.set_defaults(func=_cmd_detect_box)
