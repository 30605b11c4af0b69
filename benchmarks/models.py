"""Bring your own model: CAM extraction and CAM-penalty training on torchvision ResNets.

Same as ``xai-feedback bench models``. Needs the integration environment (torchvision,
pytorch-grad-cam, torchcam, captum; see ``tests/integration/requirements.txt``).

For each model (random init, 1000 classes, ``--size`` px, batch ``--batch``), in one process
on the same batch and the same target classes:

- extraction of Grad-CAM and Grad-CAM++ maps resized to the input and min-max normalized (the
  output pytorch-grad-cam gives) by ``xai_feedback`` (``CAMHook(leaf=True)`` with the
  parameters frozen for the call), pytorch-grad-cam, torchcam and captum, against the floor:
  a plain ``torch.no_grad()`` forward;
- one training step (SGD) of cross-entropy (vanilla), cross-entropy + the CAM center penalty
  (``cam_penalty_objective``), and cross-entropy + RRR (input-gradient penalty).

Vision transformers (part ``vit``; ``--vit-models``, torchvision ``vit_b_16`` and timm
``vit_tiny_patch16_224`` at ``--size`` px): token Grad-CAM extraction by ``xai_feedback``
(``CAMHook(leaf=True)`` on the default layer, the last block's first norm, tokens folded by the
structure's ``TokenReshape``) against the same floor and pytorch-grad-cam's ViT recipe (the
same layer, its ``reshape_transform`` dropping the class token), same output (resized, min-max
normalized). Extraction needs a backward pass from the logits to the layer: with the graph cut
at the layer that is the last block and the head, about ``2 / depth`` of a forward on top of
the floor.
Part ``vit_train``: one training step of each ViT (a new 10-class head as in fine-tuning,
random images, a border mask) with
cross-entropy (vanilla), + the center penalty on token Grad-CAM (``cam_penalty_objective(...,
method="grad_cam")``), + a mask penalty on Chefer relevance and RobustViT's objective
(``relevance_penalty_objective``), timed and measured like the CNN steps; the center and mask
penalties on every class's maps (one backward per class; and every class in one batched
backward, ``class_chunk=K``), on the label class's only (``classes="target"``: one backward),
and on every class estimated from one random-sign mix (``classes="projected"``: one
backward); and the vanilla step with attention on the math kernel the penalty steps use.

Timing: ``--repeats`` rounds after ``--warmup`` rounds; within a round every candidate runs
once, in turn, so a load change on the machine hits all of them alike; the median is reported.
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the memory held before the
call; on CPU, where torch has no allocator statistics, each candidate runs in a subprocess
with glibc's mmap threshold fixed at 64 KiB (so freed tensors go back to the system and the
resident set follows live memory): after one warm-up call, the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set before the call.
Run: ``python benchmarks/models.py --threads 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _common as common
import torch
import torch.nn.functional as F
from torch import nn

Runner = Callable[[], Any]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xai-feedback bench models", description=__doc__)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: keep)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parts", default="extract,train,vit,vit_train")
    parser.add_argument("--vit-models", default="vit_b_16,vit_tiny_patch16_224")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # PART:CANDIDATE
    return parser.parse_args(argv)


# ----- memory -----------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_mib(fn: Runner, device: torch.device) -> float:
    """Peak memory of one call of ``fn`` above what was held before it, in MiB."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def _peak_mib_subprocess(args: argparse.Namespace, model: str, part: str, name: str) -> float:
    options = [
        f"--models={model}",
        f"--size={args.size}",
        f"--batch={args.batch}",
        f"--threads={args.threads}",
        f"--device={args.device}",
        f"--measure={part}:{name}",
        f"--vit-models={model}",
    ]
    return common.subprocess_peak_mib(__file__, options)


# ----- candidates -------------------------------------------------------------------------


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-7)).view_as(maps)


def _extract_runners(
    model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor, method: str
) -> dict[str, Runner]:
    from xai_feedback.hooks import CAMHook

    size = (int(x.shape[-2]), int(x.shape[-1]))
    module = dict(model.named_modules())[layer]
    runners: dict[str, Runner] = {}

    def floor() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def ours() -> torch.Tensor:
        with _frozen(model), CAMHook(model, layer, leaf=True) as hook:
            logits = model(x)
            maps = hook.maps(logits, target, method=method, create_graph=False)
        return _minmax(F.interpolate(maps[:, None].detach(), size=size, mode="bilinear"))

    runners["floor: no-grad forward"] = floor
    runners["xai_feedback"] = ours

    try:
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        peer = GradCAM if method == "grad_cam" else GradCAMPlusPlus
        targets = [ClassifierOutputTarget(int(t)) for t in target]

        def grad_cam_lib() -> Any:
            # Its hooks live as long as the object: build it per call (cheap), so they do
            # not run during the other candidates' forwards.
            with peer(model=model, target_layers=[module]) as extractor:
                return extractor(input_tensor=x, targets=targets)

        runners["pytorch-grad-cam"] = grad_cam_lib
    except ImportError:
        pass

    try:
        from torchcam.methods import GradCAM as TCGradCAM
        from torchcam.methods import GradCAMpp as TCGradCAMpp

        cls = TCGradCAM if method == "grad_cam" else TCGradCAMpp
        classes = target.tolist()

        def torchcam() -> torch.Tensor:
            # torchcam hooks for the lifetime of the extractor: open it per call, as a
            # training-loop user must, so it does not slow the other candidates down.
            with cls(model, target_layer=layer, input_shape=tuple(x.shape[1:])) as extractor:
                scores = model(x)
                (maps,) = extractor(class_idx=classes, scores=scores)
            return F.interpolate(maps[:, None], size=size, mode="bilinear")

        runners["torchcam"] = torchcam
    except ImportError:
        pass

    if method == "grad_cam":
        try:
            from captum.attr import LayerAttribution, LayerGradCam

            captum = LayerGradCam(model, module)

            def captum_run() -> torch.Tensor:
                maps = captum.attribute(x, target=target, relu_attributions=True)
                return _minmax(LayerAttribution.interpolate(maps.detach(), size)[:, 0])

            runners["captum"] = captum_run
        except ImportError:
            pass
    return runners


def _vit_runners(
    model: nn.Module, layer: str, prefix_tokens: int, x: torch.Tensor, target: torch.Tensor
) -> dict[str, Runner]:
    from xai_feedback.hooks import CAMHook

    size = (int(x.shape[-2]), int(x.shape[-1]))
    module = dict(model.named_modules())[layer]

    def floor() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def ours() -> torch.Tensor:
        with _frozen(model), CAMHook(model, layer, leaf=True) as hook:
            logits = model(x)
            maps = hook.maps(logits, target, method="grad_cam", create_graph=False)
        return _minmax(F.interpolate(maps[:, None].detach(), size=size, mode="bilinear"))

    runners: dict[str, Runner] = {"floor: no-grad forward": floor, "xai_feedback": ours}
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(t)) for t in target]

        def reshape_transform(tensor: torch.Tensor) -> torch.Tensor:
            # pytorch-grad-cam's ViT recipe (its README), with the grid of this input
            side = int((tensor.size(1) - prefix_tokens) ** 0.5)
            patches = tensor[:, prefix_tokens:, :]
            result = patches.reshape(tensor.size(0), side, side, tensor.size(2))
            return result.transpose(2, 3).transpose(1, 2)

        def grad_cam_lib() -> Any:
            with GradCAM(
                model=model, target_layers=[module], reshape_transform=reshape_transform
            ) as extractor:
                return extractor(input_tensor=x, targets=targets)

        runners["pytorch-grad-cam"] = grad_cam_lib
    except ImportError:
        pass
    return runners


def _setup_vit(
    name: str, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, str, torch.Tensor, torch.Tensor]:
    from xai_feedback.layers import find_feature_layer

    torch.manual_seed(0)
    if name.startswith("vit_") and "patch" in name:
        import timm

        model = timm.create_model(name, pretrained=False, img_size=args.size)
    else:
        import torchvision

        model = torchvision.models.get_model(name, weights=None, image_size=args.size)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():  # torchvision zero-initializes its head: every gradient would be 0
        head.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    model = model.to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    target = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    return model, find_feature_layer(model), x, target


def _math_attention(
    objective: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]],
) -> Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]:
    """``objective`` with scaled-dot-product attention on its math kernel, as inside
    ``CAMHook`` (the forward's kernel choice fixes the backward's)."""
    from xai_feedback._modes import math_attention

    def run(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with math_attention():
            loss, logits = objective(model, batch)
        return loss, logits

    return run


def _chunked_objective(
    kind: str, penalty: nn.Module, layer: str, class_chunk: int
) -> Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]:
    """The all-class penalty objective's step written out, with ``class_chunk`` classes per
    batched backward (the objectives use the default, one class per backward)."""
    from xai_feedback.hooks import CAMHook
    from xai_feedback.relevance import AttentionCapture

    def objective(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if kind == "cam":
            with CAMHook(model, layer) as hook:
                logits = model(batch.images)
                maps = hook.maps(
                    logits,
                    method="grad_cam",
                    all_classes=True,
                    check=False,
                    class_chunk=class_chunk,
                )
        else:
            with AttentionCapture(model) as capture:
                logits = model(batch.images)
                maps = capture.maps(
                    logits, all_classes=True, create_graph=False, class_chunk=class_chunk
                )
        value = penalty(maps, target=batch.labels, masks=batch.masks)
        return F.cross_entropy(logits, batch.labels) + value, logits

    return objective


def _train_runners(
    model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor, vit: bool = False
) -> dict[str, Runner]:
    from xai_feedback.losses import CenterPenalty, MaskPenalty, RobustViTPenalty
    from xai_feedback.objectives import (
        cam_penalty_objective,
        relevance_penalty_objective,
        rrr_objective,
    )
    from xai_feedback.training import Batch, cross_entropy_objective

    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device)
    edge = torch.minimum(rows, h - 1 - rows)
    masks = (torch.minimum(edge[:, None], edge[None, :]) < h // 8).expand(len(x), h, w)
    batch = Batch(x, target, masks, 0, 0, 1)
    # lr 0: the step does all its work (zero_grad, backward, the update's arithmetic) but the
    # weights stay fixed, so every round times the same step; repeated real steps on one batch
    # drove the random-init ResNet-50 to NaN maps after a few rounds (refused by the penalty).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    objectives = {
        "vanilla step (cross-entropy)": cross_entropy_objective,
        "CAM-penalty step": cam_penalty_objective(CenterPenalty(), 1.0, layer=layer),
        "RRR step": rrr_objective(None, 1.0),
    }
    if vit:  # token Grad-CAM (no GAP + linear head on the tokens) and relevance penalties
        objectives = {
            "vanilla step (cross-entropy)": cross_entropy_objective,
            "token Grad-CAM center-penalty step": cam_penalty_objective(
                CenterPenalty(), 1.0, method="grad_cam", layer=layer
            ),
            "token Grad-CAM center-penalty step, label class": cam_penalty_objective(
                CenterPenalty(classes="target"), 1.0, method="grad_cam", layer=layer
            ),
            "token Grad-CAM mask-penalty step, label class": cam_penalty_objective(
                MaskPenalty(classes="target"), 1.0, method="grad_cam", layer=layer
            ),
            "token Grad-CAM center-penalty step, all classes projected": cam_penalty_objective(
                CenterPenalty(classes="projected"),
                1.0,
                method="grad_cam",
                layer=layer,
                generator=torch.Generator().manual_seed(0),
            ),
            "Chefer-relevance mask-penalty step": relevance_penalty_objective("mask", 1.0),
            "Chefer-relevance mask-penalty step, label class": relevance_penalty_objective(
                MaskPenalty(classes="target"), 1.0
            ),
            "RobustViT step": relevance_penalty_objective(
                RobustViTPenalty(marks="excluded"), 1.0, classification=0.25
            ),
        }
        k = int(model(x[:1]).shape[1])  # every class in one batched backward (class_chunk)
        objectives |= {
            # the penalty steps run attention on its math kernel (double backward): the
            # vanilla step on the same kernel separates that choice from the penalty's cost
            "vanilla step, math attention": _math_attention(cross_entropy_objective),
            f"token Grad-CAM center-penalty step, class_chunk {k}": _chunked_objective(
                "cam", CenterPenalty(), layer, k
            ),
            f"Chefer-relevance mask-penalty step, class_chunk {k}": _chunked_objective(
                "relevance", MaskPenalty(), layer, k
            ),
        }

    def runner(objective: Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]]):
        def step() -> None:
            loss, _ = objective(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    return {name: runner(obj) for name, obj in objectives.items()}


# ----- driver -----------------------------------------------------------------------------


def _bench(
    runners: dict[str, Runner],
    reference: str,
    args: argparse.Namespace,
    device: torch.device,
    model: str,
    part: str,
) -> list[dict[str, Any]]:
    seconds = common.time_round_robin(runners, args.repeats, args.warmup, device)
    rows = []
    for name, fn in runners.items():
        if device.type == "cuda":
            peak = _peak_mib(fn, device)
        else:
            peak = _peak_mib_subprocess(args, model, part, name)
        rows.append(
            {
                "candidate": name,
                "seconds": seconds[name],
                "vs_reference": seconds[name] / seconds[reference],
                "peak_mib": peak,
            }
        )
    return rows


def _setup(
    name: str, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, str, torch.Tensor, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    target = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    return model, "layer4", x, target


def _runners(
    part: str, model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor
) -> dict[str, Runner]:
    if part == "vit":
        from xai_feedback.layers import token_layout

        model.eval()
        return _vit_runners(model, layer, token_layout(model).prefix_tokens or 0, x, target)
    if part == "vit_train":
        from xai_feedback.models import replace_head

        # a fine-tuning head of 10 classes: the center penalty takes every class's token
        # Grad-CAM, one backward pass per class (CAM's single einsum needs a GAP head)
        replace_head(model, num_classes=10, generator=torch.Generator().manual_seed(1))
        model.train()
        return _train_runners(model, layer, x, target % 10, vit=True)
    if part == "train":
        model.train()
        return _train_runners(model, layer, x, target)
    model.eval()
    return _extract_runners(model, layer, x, target, part)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table per model and part; return the exit status."""
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.measure is not None:  # child process of a CPU memory measurement
        part, candidate = args.measure.split(":", 1)
        setup = _setup_vit(args.vit_models, args, device) if part.startswith("vit") else None
        fn = _runners(part, *(setup or _setup(args.models, args, device)))[candidate]
        fn()  # warm-up: one-time allocations are not the step's footprint
        print(_peak_mib(fn, device))
        return 0
    results: list[dict[str, Any]] = []
    parts = args.parts.split(",")
    for name in args.models.split(",") if {"extract", "train"} & set(parts) else []:
        model, layer, x, target = _setup(name, args, device)
        if "extract" in parts:
            for method in ("grad_cam", "grad_cam_pp"):
                runners = _runners(method, model, layer, x, target)
                rows = _bench(runners, "floor: no-grad forward", args, device, name, method)
                ours = next(r["seconds"] for r in rows if r["candidate"] == "xai_feedback")
                for row in rows:
                    row.update(model=name, part=method, vs_xai_feedback=row["seconds"] / ours)
                results += rows
                _print(rows, f"{name}: {method} extraction", "vs floor")
        if "train" in parts:
            runners = _runners("train", model, layer, x, target)
            rows = _bench(runners, "vanilla step (cross-entropy)", args, device, name, "train")
            for row in rows:
                row.update(model=name, part="train")
            results += rows
            _print(rows, f"{name}: training step", "vs vanilla")
    for name in args.vit_models.split(",") if "vit" in parts else []:
        model, layer, x, target = _setup_vit(name, args, device)
        runners = _runners("vit", model, layer, x, target)
        rows = _bench(runners, "floor: no-grad forward", args, device, name, "vit")
        ours = next(r["seconds"] for r in rows if r["candidate"] == "xai_feedback")
        for row in rows:
            row.update(
                model=name, part="vit_grad_cam", layer=layer, vs_xai_feedback=row["seconds"] / ours
            )
        results += rows
        _print(rows, f"{name} ({layer}): token Grad-CAM extraction", "vs floor")
    for name in args.vit_models.split(",") if "vit_train" in parts else []:
        model, layer, x, target = _setup_vit(name, args, device)
        runners = _runners("vit_train", model, layer, x, target)
        rows = _bench(runners, "vanilla step (cross-entropy)", args, device, name, "vit_train")
        for row in rows:
            row.update(model=name, part="vit_train", layer=layer)
        results += rows
        _print(rows, f"{name}: training step", "vs vanilla")
    print(
        f"\n{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, {args.size} px, median of {args.repeats} after {args.warmup} warm-up"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


def _print(rows: list[dict[str, Any]], title: str, ratio: str) -> None:
    print(f"\n{title}")
    extra = "vs_xai_feedback" in rows[0]
    header = f"| candidate | seconds | {ratio} |" + (" xai_feedback speed-up |" if extra else "")
    print(header + " peak memory (MiB) |")
    print("|---|---|---|" + ("---|" if extra else "") + "---|")
    for r in rows:
        cells = f"| {r['candidate']} | {r['seconds']:.3f} | {r['vs_reference']:.2f}x |"
        if extra:
            cells += f" {r['vs_xai_feedback']:.2f}x |"
        print(cells + f" {r['peak_mib']:.0f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
