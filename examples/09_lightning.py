"""The CAM penalty in a LightningModule.training_step: the same three lines as a plain loop.

Same data, model, optimizer and batch order as examples/11_plain_loop.py, so both take the
same steps in the first epoch (tests/integration/test_lightning.py checks it). Needs ``pip install
lightning`` (skipped with a message without it). Run: python examples/09_lightning.py
"""

import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning as L
except ImportError:
    print("examples/09_lightning.py needs lightning: pip install lightning (skipped)")
    sys.exit(0)

from xai_feedback.data import ImageDataset, confounded_digits, load_digits
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty
from xai_feedback.models import GAPNet
from xai_feedback.training import accuracy


class CAMPenaltyModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, lam: float = 10.0) -> None:
        super().__init__()
        self.model, self.lam = model, lam
        self.penalty = CenterPenalty(sigma=0.7)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        with CAMHook(self.model) as hook:  # 1. capture the CAM layer
            logits = self.model(x)
            maps = hook.maps(logits, all_classes=True)  # 2. (B, K, 14, 14), in the graph
        loss = F.cross_entropy(logits, y) + self.lam * self.penalty(maps)  # 3. penalize
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=3e-3)


def train(data: ImageDataset, epochs: int = 3, lam: float = 10.0, seed: int = 0) -> GAPNet:
    model = GAPNet(width=8, generator=torch.Generator().manual_seed(seed))
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TensorDataset(data.images, data.labels), batch_size=64, shuffle=True, generator=order
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(CAMPenaltyModule(model, lam), loader)
    return model.eval()


if __name__ == "__main__":
    torch.set_num_threads(2)
    model = train(confounded_digits("train", "frame", size=2, seed=0))
    print(
        f"Lightning: clean test {accuracy(model, load_digits('test')):.3f}, confound test "
        f"{accuracy(model, confounded_digits('test', 'frame', seed=0)):.3f}"
    )
