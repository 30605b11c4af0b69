"""What capturing attention and computing transformer relevance cost, against the fused forward.

Same as ``xai-feedback bench relevance``. Needs the integration environment (timm,
torchvision; see ``tests/integration/requirements.txt``).

For each model (random init, 1000 classes, ``--size`` px, batch ``--batch``), in one process
on the same batch and the same target classes, every candidate timed round-robin (one run of
each per round, ``--repeats`` rounds after ``--warmup``; the median is reported):

- ``forward``: the model's own (fused, SDPA) forward, with autograd recording (training
  mode), the reference of the capture rows;
- ``forward + capture``: the same forward inside :class:`xai_feedback.relevance.AttentionCapture`
  (timm: ``fused_attn`` off; torchvision: MHA recomputed in a forward hook);
- ``forward + backward``: cross-entropy and its backward, the reference of the relevance rows;
- ``rollout`` / ``chefer_relevance (first order)`` / ``chefer_relevance (create_graph)``:
  capture, forward, and the maps (``create_graph=False``: RobustViT's setting, the gradients
  ``dy/dA`` constants; ``True``: kept in the graph);
- ``training step, RobustViT penalty``: forward, relevance (first order), cross-entropy +
  :class:`~xai_feedback.losses.RobustViTPenalty` and the backward of the sum, against the
  ``forward + backward`` of plain cross-entropy.

Run: ``python benchmarks/relevance.py --threads 2`` (``--quick``: 2 blocks, 64 px, batch 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import _common as common
import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback.losses import RobustViTPenalty
from xai_feedback.relevance import AttentionCapture

Runner = Callable[[], Any]

__all__ = ["main"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xai-feedback bench relevance", description=__doc__)
    parser.add_argument("--models", default="timm_vit_tiny,torchvision_vit_tiny")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: keep)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="2 blocks, 64 px, batch 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.depth, args.size, args.batch, args.repeats = 2, 64, 2, 2
    return args


def _model(name: str, args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("timm_"):
        import timm

        arch = {"timm_vit_tiny": "vit_tiny_patch16_224", "timm_vit_base": "vit_base_patch16_224"}
        return timm.create_model(arch[name], pretrained=False, img_size=args.size, depth=args.depth)
    from torchvision.models.vision_transformer import VisionTransformer

    dims = {"torchvision_vit_tiny": (192, 3), "torchvision_vit_b_16": (768, 12)}[name]
    model = VisionTransformer(
        image_size=args.size,
        patch_size=16,
        num_layers=args.depth,
        num_heads=dims[1],
        hidden_dim=dims[0],
        mlp_dim=4 * dims[0],
    )
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts the head at 0
    return model


def _runners(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, masks: torch.Tensor
) -> dict[str, Runner]:
    penalty = RobustViTPenalty()

    def forward() -> None:
        model(x)

    def forward_capture() -> None:
        with AttentionCapture(model):
            model(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()

    def maps(method: str, create_graph: bool) -> Runner:
        def run() -> None:
            with AttentionCapture(model) as capture:
                logits = model(x)
                capture.maps(logits, target, method=method, create_graph=create_graph)

        return run

    def robustvit_step() -> None:
        model.zero_grad(set_to_none=True)
        with AttentionCapture(model) as capture:
            logits = model(x)
            rel = capture.maps(logits, target, create_graph=False)
        (F.cross_entropy(logits, target) + penalty(rel, masks=masks)).backward()

    return {
        "forward": forward,
        "forward + capture": forward_capture,
        "forward + backward": forward_backward,
        "rollout": maps("rollout", False),
        "chefer_relevance (first order)": maps("chefer_relevance", False),
        "chefer_relevance (create_graph)": maps("chefer_relevance", True),
        "training step, RobustViT penalty": robustvit_step,
    }


REFERENCE = {
    "forward": "forward",
    "forward + capture": "forward",
    "forward + backward": "forward + backward",
    "rollout": "forward + backward",
    "chefer_relevance (first order)": "forward + backward",
    "chefer_relevance (create_graph)": "forward + backward",
    "training step, RobustViT penalty": "forward + backward",
}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table per model; return the exit status."""
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    target = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    masks = torch.zeros(args.batch, args.size, args.size, device=device)
    quarter = args.size // 4
    masks[:, quarter:-quarter, quarter:-quarter] = 1
    for name in args.models.split(","):
        model = _model(name, args).to(device).train()
        times = common.time_round_robin(
            _runners(model, x, target, masks), args.repeats, args.warmup, device
        )
        print(f"\n{name} ({args.depth} blocks)")
        print("| candidate | seconds | ratio | against |")
        print("|---|---|---|---|")
        for cand, seconds in times.items():
            ref = REFERENCE[cand]
            print(f"| {cand} | {seconds:.4f} | {seconds / times[ref]:.2f}x | {ref} |")
        sys.stdout.flush()
    print(
        f"\n{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, {args.size} px, median of {args.repeats} after {args.warmup} warm-up"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
