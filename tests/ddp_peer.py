"""The token-wise constrained SFT peer (``ConstrainedSFTTrainer``) on one process, or on two under DDP.

Run (from the repository root): python -m tests.ddp_peer OUT                        (one process, batch 8)
     torchrun --nproc_per_node 2 -m tests.ddp_peer OUT   (two CPU processes, gloo, batch 4 each)
Trains LoRA adapters of a tiny Llama for three SGD steps on the same global batch of 8 examples and writes the
trained adapter weights to ``OUT/weights.safetensors`` on rank 0.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from safetensors.torch import save_file

from logitguard.baselines import ConstrainedSFTTrainer, label_log_probs
from logitguard.data.chat import collate, encode_chat
from logitguard.lab.toy.corpus import build_corpus
from logitguard.lab.toy.model import build_tokenizer
from tests.helpers import BENIGN, lora, perturb_lora, tiny_llama, training_args


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tokenizer = build_tokenizer(build_corpus(0))
    model = tiny_llama(tokenizer)
    encoded = [encode_chat(tokenizer, p, r) for p, r in BENIGN[:8]]
    for example, values in zip(encoded, label_log_probs(model, encoded, tokenizer.pad_token_id), strict=True):
        example["ref_log_probs"] = values
    model = lora(model)
    perturb_lora(model)  # away from the reference, so the constraint is not the plain NLL
    trainer = ConstrainedSFTTrainer(
        model=model,
        args=training_args(
            args.out, max_steps=3, per_device_train_batch_size=8 // world, optim="sgd", learning_rate=0.5, seed=0
        ),
        train_dataset=encoded,
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
    )
    trainer.train()
    if trainer.is_world_process_zero():
        weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(weights, str(args.out / "weights.safetensors"))


if __name__ == "__main__":
    main()
