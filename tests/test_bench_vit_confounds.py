"""The ViT confound battery: its map penalty arm, its extension point, resumable smoke runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xai_feedback.cli import find_benchmarks, list_benchmarks, load_benchmark
from xai_feedback.data import confounded_digits
from xai_feedback.losses import MaskPenalty, RobustViTPenalty
from xai_feedback.models import TinyViT
from xai_feedback.training import Batch

FOLDER = find_benchmarks(Path(__file__).parent)
vit = load_benchmark("vit_confounds", FOLDER)


def _json_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.json"))


def test_is_a_benchmark() -> None:
    assert FOLDER is not None and "vit_confounds" in list_benchmarks(FOLDER)


def test_default_arms_and_annotations() -> None:
    assert set(vit.DEFAULT_ARMS) <= set(vit.ARMS)
    assert vit.ARMS["mask_cam"].annotated and not vit.ARMS["center_cam"].annotated
    assert vit.ARMS["oracle"].oracle and vit.ARMS["counterexamples"].annotated


def test_difference_arm_is_the_prediction_difference_objective() -> None:
    from xai_feedback.counterexamples import Counterexamples
    from xai_feedback.objectives import prediction_difference_objective

    data = confounded_digits("train", "frame").subset(torch.arange(8))
    batch = Batch(data.images, data.labels, data.masks, 0, 0, 1)
    model = TinyViT(generator=torch.Generator().manual_seed(0))
    arm = vit.ARMS["difference"]
    assert arm.annotated
    loss, _ = arm.make(3, data)(model, batch)
    g = torch.Generator().manual_seed(10_003)
    weight = float(arm.description.rsplit(" ", 1)[1])
    expected, _ = prediction_difference_objective(
        weight, augment=Counterexamples(fill="swap", generator=g)
    )(model, batch)
    torch.testing.assert_close(loss, expected)


def test_map_penalty_objective_adds_the_weighted_penalty_of_the_token_cams() -> None:
    model = TinyViT(dim=16, depth=1, heads=2, generator=torch.Generator().manual_seed(0))
    data = confounded_digits("train", "frame").subset(torch.arange(6))
    batch = Batch(data.images, data.labels, data.masks, 0, 0, 1)
    loss, logits = vit.map_penalty_objective(vit.token_cam, MaskPenalty(), 3.0)(model, batch)
    # independent reference: the head's weights on the folded, normed tokens by hand
    tokens = model.patch_embed(data.images) + model.pos_embed
    for block in model.blocks:
        tokens = block(tokens)
    tokens = model.norm(tokens)
    cams = torch.einsum("kc,bnc->bkn", model.classifier.weight, tokens).view(6, 10, 7, 7)
    # the frame's 2 px border covers half of each border cell (4x4 px) and none inside
    cover = torch.zeros(7, 7)
    cover[0, :] = cover[-1, :] = cover[:, 0] = cover[:, -1] = 0.5
    cover[0, 0] = cover[0, -1] = cover[-1, 0] = cover[-1, -1] = 0.75
    expected_penalty = ((cover * cams) ** 2).mean()
    ce = torch.nn.functional.cross_entropy(logits, data.labels)
    assert torch.allclose(loss, ce + 3.0 * expected_penalty, rtol=1e-5)
    (grad,) = torch.autograd.grad(loss, model.blocks[0].attn.qkv.weight)
    assert bool(grad.abs().sum() > 0)


def _attentions_by_hand(
    model: TinyViT, images: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """TinyViT's forward written out from its weights, keeping each block's softmax(QK^T/sqrt d)."""
    x = model.patch_embed(images) + model.pos_embed
    b, t, d = x.shape
    attentions = []
    for block in model.blocks:
        attn = block.attn
        h = attn.heads
        qkv = attn.qkv(block.norm1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        a = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) / (d // h) ** 0.5, dim=-1)
        attentions.append(a)
        x = x + attn.proj((a @ qkv[2]).transpose(1, 2).reshape(b, t, d))
        x = x + block.mlp(block.norm2(x))
    return model.classifier(model.norm(x).mean(1)), attentions


def _chefer_by_hand(images: torch.Tensor, labels: torch.Tensor, model: TinyViT) -> torch.Tensor:
    # Chefer et al. 2021 (rules 5, 6): R = I; R += mean_h (dy/dA * A)^+ R per block; the
    # average-pooled model reads the mean of the patch rows
    logits, attentions = _attentions_by_hand(model, images)
    grads = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), attentions)
    rel = torch.eye(49).expand(len(images), 49, 49)
    for a, g in zip(attentions, grads, strict=True):
        rel = rel + (g * a).clamp(min=0).mean(1) @ rel
    return rel.mean(1).view(-1, 7, 7)


def _rollout_by_hand(images: torch.Tensor, model: TinyViT) -> torch.Tensor:
    # Abnar & Zuidema 2020: the product of (mean_h A + I) / 2, last block on the left
    _, attentions = _attentions_by_hand(model, images)
    joint = torch.eye(49)
    for a in attentions:
        joint = 0.5 * (a.mean(1) + torch.eye(49)) @ joint
    return joint.mean(1).view(-1, 7, 7)


def _frame_cover() -> torch.Tensor:
    # the frame's 2 px border covers half of each border cell (4x4 px) and none inside
    cover = torch.zeros(7, 7)
    cover[0, :] = cover[-1, :] = cover[:, 0] = cover[:, -1] = 0.5
    cover[0, 0] = cover[0, -1] = cover[-1, 0] = cover[-1, -1] = 0.75
    return cover


@pytest.mark.parametrize("name", ["chefer", "rollout"])
def test_relevance_map_objective_adds_the_weighted_penalty_of_hand_computed_maps(
    name: str,
) -> None:
    model = TinyViT(dim=16, depth=2, heads=2, generator=torch.Generator().manual_seed(1))
    data = confounded_digits("train", "frame").subset(torch.arange(6))
    batch = Batch(data.images, data.labels, data.masks, 0, 0, 1)
    assert {f"center_{name}", f"mask_{name}"} <= set(vit.ARMS)
    assert vit.MAP_OF[f"mask_{name}"] == name
    loss, logits = vit.map_penalty_objective(vit.MAPS[name], MaskPenalty(), 3.0)(model, batch)
    if name == "chefer":
        maps = _chefer_by_hand(data.images, data.labels, model)
    else:
        maps = _rollout_by_hand(data.images, model)
    assert torch.allclose(maps.sum((1, 2)), torch.ones(6), atol=0.5)  # a share of the tokens
    expected_penalty = ((_frame_cover() * maps.detach()) ** 2).mean()
    ce = torch.nn.functional.cross_entropy(logits, data.labels)
    assert torch.allclose(loss, ce + 3.0 * expected_penalty, rtol=1e-5)
    # the penalty alone trains the attention (Chefer's gradients dy/dA are constants)
    penalty = loss - ce
    (grad,) = torch.autograd.grad(penalty, model.blocks[0].attn.qkv.weight)
    assert bool(grad.abs().sum() > 0)


def test_robustvit_arm_is_cross_entropy_plus_robustvit_on_chefer_relevance() -> None:
    model = TinyViT(dim=16, depth=2, heads=2, generator=torch.Generator().manual_seed(2))
    data = confounded_digits("train", "stripe").subset(torch.arange(6))
    batch = Batch(data.images, data.labels, data.masks, 0, 0, 1)
    arm = vit.robustvit_arm(5.0)
    assert arm.annotated and not arm.oracle and "lambda 5" in arm.description
    assert vit.ARMS["robustvit"].annotated
    loss, logits = arm.make(0, data)(model, batch)
    maps = _chefer_by_hand(data.images, data.labels, model).detach()
    # the confound masks mark what is excluded: the paper's foreground is their complement
    foreground = 1.0 - data.masks.float()
    expected = RobustViTPenalty(marks="foreground")(maps, masks=foreground)
    ce = torch.nn.functional.cross_entropy(logits, data.labels)
    assert bool(expected > 0)
    assert torch.allclose(loss, ce + 5.0 * expected, rtol=1e-5)


def test_register_map_adds_its_arms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vit, "MAPS", dict(vit.MAPS))
    monkeypatch.setattr(vit, "ARMS", dict(vit.ARMS))
    monkeypatch.setattr(vit, "MAP_OF", dict(vit.MAP_OF))
    vit.register_map("copy_cam", vit.token_cam, center=1.0, mask=2.0)
    assert {"center_copy_cam", "mask_copy_cam"} <= set(vit.ARMS)
    assert "lambda 2" in vit.ARMS["mask_copy_cam"].description
    assert vit.MAP_OF["center_copy_cam"] == "copy_cam"
    with pytest.raises(ValueError, match="already registered"):
        vit.register_map("copy_cam", vit.token_cam, center=1.0, mask=2.0)
    with pytest.raises(ValueError, match="already registered"):
        vit.register_arm(vit.ARMS["vanilla"])


def test_battery_resumes_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--out", str(tmp_path), "--threads", "1"]
    assert vit.main(argv) == 0
    assert _json_files(tmp_path) == [
        "runs/tinyvit/frame/mask_cam/seed0.json",
        "runs/tinyvit/frame/vanilla/seed0.json",
    ]
    record = json.loads((tmp_path / "runs/tinyvit/frame/mask_cam/seed0.json").read_text())
    assert record["identity"]["dim"] == 16 and record["identity"]["epochs"] == 1
    assert 0.0 <= record["confound_test_accuracy"] <= 1.0
    out = capsys.readouterr().out
    assert "| frame |" in out and "best annotation arm" in out
    monkeypatch.setattr(vit, "run_vit", lambda *a, **k: pytest.fail("retrained"))
    assert vit.main(argv) == 0
    assert vit.main([*argv, "--report-only"]) == 0
    assert (tmp_path / "table.md").exists()


def test_select_resumes_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--select", "--out", str(tmp_path), "--threads", "1"]
    argv += ["--maps", "rollout", "--select-arms", "robustvit"]
    assert vit.main(argv) == 0
    assert _json_files(tmp_path) == [
        "select/tinyvit/frame/center_rollout_lam=10/lr0.003_e1/seed0.json",
        "select/tinyvit/frame/mask_rollout_lam=10/lr0.003_e1/seed0.json",
        "select/tinyvit/frame/oracle/lr0.003_e1/seed0.json",
        "select/tinyvit/frame/robustvit_lam=10/lr0.003_e1/seed0.json",
    ]
    out = capsys.readouterr().out
    assert "chosen on the validation split" in out and "robustvit: lambda 10" in out
    monkeypatch.setattr(vit, "run_vit", lambda *a, **k: pytest.fail("retrained"))
    assert vit.main(argv) == 0


def test_unknown_arm_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        vit.main(["--quick", "--arms", "rollout_center"])
    assert "unknown arm 'rollout_center'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vit.main(["--quick", "--select", "--select-kinds", "mask,border"])
    assert "unknown penalty kind 'border'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vit.main(["--quick", "--select", "--select-arms", "vanilla"])
    assert "unknown arm 'vanilla'" in capsys.readouterr().err


def test_first_seed_shares_the_seeds_between_processes(tmp_path: Path) -> None:
    argv = ["--quick", "--out", str(tmp_path), "--threads", "1", "--arms", "vanilla"]
    assert vit.main([*argv, "--first-seed", "2"]) == 0
    assert _json_files(tmp_path) == ["runs/tinyvit/frame/vanilla/seed2.json"]
    record = json.loads((tmp_path / "runs/tinyvit/frame/vanilla/seed2.json").read_text())
    assert record["seed"] == 2


def test_summary_names_the_best_annotation_arm_and_its_gap() -> None:
    def rec(arm: str, acc: float) -> dict[str, object]:
        return {"family": "frame", "arm": arm, "confound_test_accuracy": acc}

    records = [rec("oracle", 0.96), rec("oracle", 0.94), rec("mask_cam", 0.5)]
    records += [rec("counterexamples", 0.92), rec("counterexamples", 0.93)]
    records += [rec("center_cam", 0.6), rec("vanilla", 0.3)]
    arms = ["vanilla", "center_cam", "mask_cam", "counterexamples", "oracle"]
    row = [line for line in vit.summary(records, ["frame"], arms).splitlines() if "frame" in line]
    # best annotation arm: counterexamples 0.925 vs oracle 0.950, 2.5 points: within 3;
    # best penalty: the center penalty on CAMs (0.6 > 0.5)
    assert row == [
        "| frame | counterexamples | 0.925 | 0.950 | +2.5 | yes | center_cam (cam, 0.600) |"
    ]
    far = vit.summary([*records, rec("oracle", 0.99)], ["frame"], arms)
    assert "| 0.963 | +3.8 | no |" in far  # oracle (0.96 + 0.94 + 0.99) / 3
