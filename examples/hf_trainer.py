"""Hugging Face ``Trainer`` with NeuralGraphOpt, passed with its scheduler through ``optimizers=``.

A 1-layer GPT-2 (hidden size 16, built from a config: nothing is downloaded) learns to count
modulo 32. Checkpoints hold ``optimizer.pt`` = ``NeuralGraphOpt.state_dict()``, which Trainer
reloads with ``torch.load(weights_only=True)`` on resume::

    HF_HUB_OFFLINE=1 python examples/hf_trainer.py --output-dir runs/hf
    HF_HUB_OFFLINE=1 python examples/hf_trainer.py --output-dir runs/hf --resume runs/hf/checkpoint-10
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, get_cosine_schedule_with_warmup

from l2o import NeuralGraphOpt

VOCAB, LENGTH = 32, 16


class CountingDataset(Dataset):
    """Sequences ``i, i+1, ... (mod 32)``: next-token prediction a tiny model learns in a few steps."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = (torch.arange(LENGTH) + i) % VOCAB
        return {"input_ids": ids, "labels": ids}


def make_model(seed: int = 0) -> GPT2LMHeadModel:
    """A 1-layer GPT-2 with hidden size 16 (its output layer is tied to the token embedding)."""
    torch.manual_seed(seed)
    sizes = {"vocab_size": VOCAB, "n_positions": LENGTH, "n_embd": 16, "n_layer": 1, "n_head": 2}
    config = GPT2Config(**sizes, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def main(output_dir: str, max_steps: int = 150, save_steps: int = 75, resume: str | None = None) -> Trainer:
    """Train for ``max_steps`` (in total, when resuming), checkpointing every ``save_steps``."""
    model = make_model()
    optimizer = NeuralGraphOpt(model.parameters(), model=model)  # lr=1: the default rule estimates its step size
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=max_steps)
    args = TrainingArguments(
        output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=8,
        save_steps=save_steps,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=CountingDataset(), optimizers=(optimizer, scheduler))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/hf")
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--resume", help="a checkpoint folder, e.g. runs/hf/checkpoint-75")
    main(**vars(parser.parse_args()))
