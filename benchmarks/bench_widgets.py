"""Kernel-side latency of the slice views: redraw of one 512 x 512 slice with overlay.

Usage::

    python benchmarks/bench_widgets.py                    # 50 repetitions per measure
    python benchmarks/bench_widgets.py --repeat 200 --json out.json

Measured on a synthetic 512 x 512 x 40 int16 CT (0.7 x 0.7 x 2.5 mm) with a mask (a
filled ellipse in every slice) and two scribbles, through a real :class:`~iunet_nb.interactive.session.Session`
(random 16-base iUnet; the network is not run). Each a median (and 90th percentile) in ms:

* ``compose``: window/level + overlay + scribbles -> RGBA (:func:`compose_slice`);
* ``compose contour``: the same with the contour-only overlay;
* ``png (ours)``: :func:`encode_png` (zlib level 1); ``png (ipycanvas)``: what
  ``Canvas.put_image_data`` would do instead (Pillow PNG, default level);
* ``redraw``: :meth:`SliceView.redraw` end to end: two ``Session.slice_of`` copies, compose,
  encode, one batched canvas message (goal: median <= 30 ms);
* ``redraw pan``: a redraw that reuses the encoded slice (pan, zoom, crosshair);
* ``stroke preview``: one mouse move while painting (one short line segment);
* ``scroll``: ``slice_index += 1`` (observer -> redraw of the new slice).

With ``--ct PATH`` (a CT file or DICOM folder, e.g. ``../shared/data/nih_pancreas_ct/
PANCREAS_0002/dicom``, 195 x 512 x 512) it also times the annotator on that CT: the kernel
time of a mask change (one paint stroke: Session.paint, three redraws, the 3D view told) with
the ipyniivue 3D view and without it, the 3D view's deferred send, and a scroll on each view.

Outside a running kernel the widget messages go nowhere, so the time to push the bytes
through ZeroMQ is not included; ``../shared/ENVIRONMENT.md`` measured 1.4-2.1 ms for that
(``put_image_data`` of 512 x 512 in a live kernel), and 0.18-0.31 s from kernel to pixels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.checkpoint import ModelCard, machine_description
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.widgets.render import compose_slice, encode_png
from iunet_nb.widgets.slice_view import SliceView


def _case(n_z: int = 40) -> Volume:
    rng = np.random.default_rng(0)
    _, yy, xx = np.ogrid[:n_z, :512, :512]
    body = ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 240.0) ** 2 <= 1
    ct = np.ascontiguousarray(np.broadcast_to(np.where(body, 40, -1000), (n_z, 512, 512)),
                              dtype=np.int16)
    ct += rng.normal(0, 15, size=ct.shape).astype(np.int16)
    return Volume(ct, Geometry(spacing_mm=(2.5, 0.7, 0.7)))


def _time(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    return statistics.median(ts), ts[min(int(0.9 * len(ts)), len(ts) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    ap.add_argument("--ct", default="", help="also time the annotator on this CT (file or "
                                             "DICOM folder)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ct = _case()
    card = ModelCard(net=NetConfig(base_channels=16))
    torch.manual_seed(0)
    session = Session(ct, build_network(card.net).eval(), card, config=RefineConfig(device="cpu"))
    k = ct.shape[0] // 2
    assert ct.shape == (40, 512, 512)
    zz, yy, xx = np.nonzero(np.ones((1, 512, 512), bool) & (
        ((np.arange(512)[:, None] - 250) / 60.0) ** 2
        + ((np.arange(512)[None, :] - 270) / 90.0) ** 2 <= 1)[None])
    session.paint(1, points=np.stack([zz + k, yy, xx], axis=1))
    session.add_scribble("fg", [(250, 230), (252, 300)], view="axial", slice_index=k,
                         radius_mm=3)
    session.add_scribble("bg", [(330, 200), (340, 320)], view="axial", slice_index=k,
                         radius_mm=3)
    view = SliceView(ct, "axial", session=session, size_px=512)
    view.slice_index = k
    image, mask, scribbles = view.layers()
    rgba = compose_slice(image, 400, 40, mask=mask, scribbles=scribbles)

    from ipycanvas.utils import binary_image

    results: dict[str, tuple[float, float]] = {
        "compose": _time(lambda: compose_slice(image, 400, 40, mask=mask, scribbles=scribbles),
                         args.repeat),
        "compose contour": _time(lambda: compose_slice(image, 400, 40, mask=mask,
                                                       scribbles=scribbles, contour_only=True),
                                 args.repeat),
        "png (ours)": _time(lambda: encode_png(rgba), args.repeat),
        "png (ipycanvas)": _time(lambda: binary_image(rgba), max(args.repeat // 5, 5)),
        "redraw": _time(view.redraw, args.repeat),
        "redraw pan": _time(lambda: view.redraw(reencode=False), args.repeat),
    }
    view.tool = "fg"
    view.handle_mouse_down(200.0, 200.0)
    xs = iter(range(10**6))
    results["stroke preview"] = _time(lambda: view.handle_mouse_move(200.0 + next(xs) % 50,
                                                                     210.0), args.repeat)
    view.handle_mouse_up(200.0, 210.0)
    steps = iter(range(10**6))
    results["scroll"] = _time(lambda: setattr(view, "slice_index",
                                              5 + next(steps) % 30), args.repeat)
    if args.ct:
        results.update(_annotator_on(args.ct, args.repeat))
    png_kb = len(encode_png(rgba)) / 1024
    print(f"machine: {machine_description()}")
    print(f"512 x 512 axial slice with mask + scribbles; PNG {png_kb:.0f} kB; "
          f"{args.repeat} repetitions; torch threads {args.threads}")
    for name, (med, p90) in results.items():
        print(f"  {name:<18} median {med:7.2f} ms   p90 {p90:7.2f} ms")
    verdict = "meets" if results["redraw"][0] <= 30 else "MISSES"
    print(f"redraw median {results['redraw'][0]:.1f} ms {verdict} the 30 ms goal")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": machine_description(), "png_kb": png_kb,
                       "results_ms": {k: {"median": m, "p90": p} for k, (m, p) in
                                      results.items()}}, fh, indent=1)


def _annotator_on(path: str, repeat: int) -> dict[str, tuple[float, float]]:
    """Mask-change and scroll times of the Annotator on a real CT, 3D view on and off."""
    from iunet_nb.io.images import read_image
    from iunet_nb.model.preprocess import Box
    from iunet_nb.widgets import Annotator, niivue_available

    ct = read_image(path)
    z, y, x = ct.shape
    box = Box((z // 3, y // 3, x // 3), (2 * z // 3, 2 * y // 3, 2 * x // 3))
    out: dict[str, tuple[float, float]] = {}
    print(f"annotator on {path}: {ct.shape}")
    for v3 in (("niivue", "none") if niivue_available() else ("none",)):
        app = Annotator(ct, view3d=v3, box=box)
        time.sleep(2.0)                           # let the first 3D send go by
        ax = app.views["axial"]
        k = int(ax.slice_index)
        i = iter(range(10**6))

        def paint() -> None:
            j = next(i) % 40
            pts = np.array([[y / 2 + j, x / 2 - 20], [y / 2 + j, x / 2 + 20]])
            app.handle_stroke(view="axial", slice_index=k, points=pts, tool="paint",
                              radius_mm=3)
        out[f"mask change, 3D {v3}"] = _time(paint, max(repeat // 5, 10))
        if v3 == "niivue":
            time.sleep(2.0)
            app.view3d.update_mask(app._current_mask, now=True)
            out["3D send (deferred)"] = (app.view3d.last_send_s * 1000,) * 2
        else:
            for name, view in app.views.items():
                n = view.volume.shape[view.axis]
                s = iter(range(10**6))
                out[f"scroll {name}"] = _time(lambda view=view, s=s, n=n: setattr(
                    view, "slice_index", 5 + next(s) % (n - 10)), repeat)
        app.close()
    return out


if __name__ == "__main__":
    main()
