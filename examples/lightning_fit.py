"""Lightning with NeuralGraphOpt: ``configure_optimizers`` returns it (with a scheduler), and
``Trainer.fit(ckpt_path=...)`` restores its state from a checkpoint::

    python examples/lightning_fit.py --max-steps 8 --save runs/lightning.ckpt
    python examples/lightning_fit.py --max-steps 16 --resume runs/lightning.ckpt
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning as L
import torch
from toy import full_loss, loss_fn, make_loader, make_model

from l2o import NeuralGraphOpt


class ToyModule(L.LightningModule):
    """The toy regression as a LightningModule."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_model()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = loss_fn(self.net, batch)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = NeuralGraphOpt(self.parameters(), model=self.net)  # the traceable network inside
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main(max_steps: int = 16, save: str | None = None, resume: str | None = None) -> ToyModule:
    """Fit for ``max_steps`` (in total, when resuming from the checkpoint ``resume``) on the CPU."""
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = ToyModule()
    trainer.fit(module, make_loader(), ckpt_path=resume)
    if save is not None:
        trainer.save_checkpoint(save)
    print(f"loss {full_loss(module.net):.4f}")
    return module


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=16)
    parser.add_argument("--save", help="write a checkpoint here at the end")
    parser.add_argument("--resume", help="continue from this checkpoint")
    main(**vars(parser.parse_args()))
