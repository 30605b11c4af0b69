"""PCACE benchmark: the batched ACE against the ``ace`` package looped over channels.

Parts (``--parts``):

- ``synthetic``: 64 problems x 300 observations x 3 predictors with a known non-linear link;
  the batched ACE against ``ace.ace.ACESolver`` run problem by problem, in the same process:
  agreement (max abs difference of transforms and correlations, rankings) and speed-up.
- ``real``: a reference GAP CNN trained on the digits; the channels of its ``features`` layer
  ranked for one class by :func:`xai_feedback.pcace.pcace` and by scikit-learn's
  StandardScaler + PCA + the ``ace`` package, channel by channel; agreement and speed-up.
- ``scaling``: time of the batched ACE as channels (16 ... 512) and observations
  (100 ... 1000) grow, with the reference's per-problem time at each ``n``.
- ``figure``: top and bottom channels of the real ranking over sample images.

Results go to ``--out`` (``pcace.json``, ``pcace.md``, ``pcace_channels.png``).
Run: ``python benchmarks/pcace.py [--parts synthetic,real]`` or ``xai-feedback bench pcace``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import _common as common
import numpy as np
import torch

from xai_feedback.functional.ace import ace

__all__ = ["main", "reference_ace"]


def reference_ace(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The ``ace`` package on one problem: ``x`` ``(n, k)``, ``y`` ``(n,)``; prints silenced."""
    from ace.ace import ACESolver

    solver = ACESolver()
    solver.specify_data_set(list(x.T), y)
    with contextlib.redirect_stdout(io.StringIO()):
        solver.solve()
    phi = np.stack(solver.x_transforms, axis=1)
    theta = np.asarray(solver.y_transform)
    return phi, theta, float(np.corrcoef(phi.sum(axis=1), theta)[0, 1])


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _synthetic(p: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p, n, k, generator=g, dtype=torch.float64)
    weight = torch.rand(p, 1, generator=g, dtype=torch.float64)
    y = weight * torch.sin(2 * x[..., 0]) + (1 - weight) * x[..., 1] ** 2
    y = y + 0.3 * torch.randn(p, n, generator=g, dtype=torch.float64)
    return x, y


def _compare(x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict[str, Any]:
    batched_s, result = _timed(lambda: ace(x, y), repeats)
    start = time.perf_counter()
    refs = [reference_ace(x[i].numpy(), y[i].numpy()) for i in range(x.shape[0])]
    reference_s = time.perf_counter() - start
    phi = np.stack([r[0] for r in refs])
    theta = np.stack([r[1] for r in refs])
    corr = np.array([r[2] for r in refs])
    ours = result.correlation.numpy()
    return {
        "problems": int(x.shape[0]),
        "observations": int(x.shape[1]),
        "predictors": int(x.shape[2]),
        "batched_s": batched_s,
        "reference_s": reference_s,
        "speedup": reference_s / batched_s,
        "max_abs_diff_x_transforms": float(np.abs(result.x_transforms.numpy() - phi).max()),
        "max_abs_diff_y_transform": float(np.abs(result.y_transform.numpy() - theta).max()),
        "max_abs_diff_correlation": float(np.abs(ours - corr).max()),
        "same_ranking": bool(
            (np.argsort(-ours, kind="stable") == np.argsort(-corr, kind="stable")).all()
        ),
    }


def _real(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from xai_feedback.data import load_digits
    from xai_feedback.models import GAPNet
    from xai_feedback.pcace import capture, pcace
    from xai_feedback.training import accuracy, fit

    train, test = load_digits("train"), load_digits("test")
    model = GAPNet(width=args.width, generator=torch.Generator().manual_seed(0))
    fit(model, train, epochs=args.epochs, generator=torch.Generator().manual_seed(1))
    model.eval()
    images = torch.cat(
        [train.images[train.labels == args.cls], test.images[test.labels == args.cls]]
    )
    ours_s, result = _timed(
        lambda: pcace(model, "features", images, args.cls, n_components=args.k), args.repeats
    )
    acts, logits = capture(model, "features", images)
    response = logits[:, args.cls].double().numpy()
    start = time.perf_counter()
    ref_scores = []
    for c in range(acts.shape[1]):
        maps = StandardScaler().fit_transform(acts[:, c].flatten(1).double().numpy())
        comps = PCA(n_components=args.k, svd_solver="full").fit_transform(maps)
        ref_scores.append(reference_ace(comps, response)[2])
    reference_s = time.perf_counter() - start
    ref = np.asarray(ref_scores)
    ours = result.scores.numpy()
    first = result.first_component.numpy()
    top = max(1, len(ours) // 8)
    row = {
        "test_accuracy": accuracy(model, test),
        "class": args.cls,
        "images": len(images),
        "channels": int(acts.shape[1]),
        "components": args.k,
        "pcace_s": ours_s,
        "reference_s": reference_s,
        "speedup": reference_s / ours_s,
        "max_abs_diff_scores": float(np.abs(ours - ref).max()),
        "same_ranking": result.ranking.tolist() == np.argsort(-ref, kind="stable").tolist(),
        "top_channels": result.top(top),
        "first_component_top_channels": np.argsort(-first, kind="stable")[:top].tolist(),
        "spearman_max_corr_vs_first_component": _spearman(ours, first),
    }
    return row, (model, images, acts, result)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for p, n in [(16, 300), (64, 300), (256, 300), (512, 300), (64, 100), (64, 1000)]:
        x, y = _synthetic(p, n, args.k, seed=p + n)
        batched_s, _ = _timed(partial(ace, x, y), args.repeats)
        start = time.perf_counter()
        for i in range(args.reference_sample):
            reference_ace(x[i].numpy(), y[i].numpy())
        per_problem = (time.perf_counter() - start) / args.reference_sample
        rows.append(
            {
                "problems": p,
                "observations": n,
                "batched_s": batched_s,
                "batched_ms_per_problem": 1000 * batched_s / p,
                "reference_ms_per_problem": 1000 * per_problem,
            }
        )
        print(f"  scaling P={p:4d} n={n:5d}: batched {batched_s:.3f} s", flush=True)
    return rows


def _markdown(payload: dict[str, Any]) -> str:
    lines = [f"# PCACE benchmark ({payload['threads']} torch threads, {payload['device']})", ""]
    for key in ("synthetic", "real"):
        if key in payload:
            table = common.markdown_table(["quantity", "value"], list(payload[key].items()))
            lines += [f"## {key}", "", table, ""]
    if "scaling" in payload:
        header = ["problems", "observations", "batched s", "batched ms/problem", "ace ms/problem"]
        rows = [
            [
                r["problems"],
                r["observations"],
                f"{r['batched_s']:.3f}",
                f"{r['batched_ms_per_problem']:.2f}",
                f"{r['reference_ms_per_problem']:.1f}",
            ]
            for r in payload["scaling"]
        ]
        lines += ["## scaling", "", common.markdown_table(header, rows)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see ``xai-feedback bench pcace --help``."""
    quick = ["--parts", "synthetic,real", "--problems", "4", "--observations", "60"]
    quick += ["--epochs", "1", "--repeats", "1", "--reference-sample", "1"]
    parser = common.parser("pcace", __doc__, quick=quick)
    parser.add_argument("--parts", default="synthetic,real,scaling,figure")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--observations", type=int, default=300)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--cls", type=int, default=3, help="class ranked in the real part")
    parser.add_argument("--width", type=int, default=16, help="GAPNet width (4x channels)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-sample", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = common.parse(parser, argv)
    parts = args.parts.split(",")
    payload: dict[str, Any] = {"threads": torch.get_num_threads(), "device": args.device}
    if "synthetic" in parts:
        x, y = _synthetic(args.problems, args.observations, args.k, seed=0)
        payload["synthetic"] = _compare(x, y, args.repeats)
        print(f"synthetic: {payload['synthetic']}", flush=True)
        if args.device != "cpu":
            dev = torch.device(args.device)
            xd, yd = x.to(dev), y.to(dev)

            def run_device() -> Any:
                out = ace(xd, yd)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                return out

            device_s, out = _timed(run_device, args.repeats)
            payload["synthetic"][f"{args.device}_s"] = device_s
            payload["synthetic"][f"{args.device}_speedup"] = (
                payload["synthetic"]["reference_s"] / device_s
            )
            payload["synthetic"][f"{args.device}_max_abs_diff_correlation_vs_cpu"] = float(
                (out.correlation.cpu() - ace(x, y).correlation).abs().max()
            )
    figure_inputs = None
    if "real" in parts or "figure" in parts:
        payload["real"], figure_inputs = _real(args)
        print(f"real: {payload['real']}", flush=True)
    if "scaling" in parts:
        payload["scaling"] = _scaling(args)
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_json_atomic(args.out / "pcace.json", payload)
    (args.out / "pcace.md").write_text(_markdown(payload))
    print(_markdown(payload))
    if "figure" in parts and figure_inputs is not None:
        _, images, acts, result = figure_inputs

        def draw(plt: Any) -> Any:
            from xai_feedback.viz import plot_channel_ranking

            return plot_channel_ranking(result, acts, images, top=4, bottom=4, n_images=6)

        common.figure(args.out / "pcace_channels.png", draw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
