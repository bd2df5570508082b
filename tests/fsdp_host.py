"""A custom training loop with STR, on one process or sharded with FSDP2 (``fully_shard``) over several.

Run (from the repository root): python -m tests.fsdp_host OUT [--full]          (one process, no sharding)
     torchrun --nproc_per_node 2 -m tests.fsdp_host OUT --fsdp [--full] [--tail-unit]  (two CPU processes, gloo)
Trains a tiny Llama with LoRA (or, with ``--full``, every weight) for three SGD steps of ``str_loss`` on one global
batch of 8 examples (4 per rank when sharded), with the refusal anchors and the task reference, and writes the
trained weights (gathered from their shards) and each step's terms to ``OUT`` (``weights.safetensors``,
``terms.json``) on rank 0, with what was sharded: whether every ``lm_head`` weight is a ``DTensor``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

from logitguard.artifacts.references import build_anchor_cache
from logitguard.core.config import STRConfig
from logitguard.core.objective import STRObjective
from logitguard.data.chat import collate, encode_chat
from logitguard.hosts.custom_loop import str_loss
from logitguard.lab.toy.corpus import build_corpus
from logitguard.lab.toy.model import build_tokenizer
from tests.helpers import BENIGN, REFUSALS, safety_tokens, tiny_llama


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--full", action="store_true", help="full fine-tuning (anchors only) instead of LoRA")
    parser.add_argument(
        "--tail-unit", action="store_true", help="the final norm and LM head in a unit of their own, as Accelerate does"
    )
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.fsdp:
        dist.init_process_group("gloo")
    tokenizer = build_tokenizer(build_corpus(0))
    model = tiny_llama(tokenizer)
    tokens = safety_tokens(tokenizer)
    anchors = build_anchor_cache(model, tokenizer, REFUSALS * 2, tokens)
    if args.full:
        config = STRConfig("mse", 1.0, reference="anchors", anchors_per_step=4)
    else:
        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
        with torch.no_grad():  # a LoRA update that moved the model already, so every term has a gradient
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        config = STRConfig("kl", 0.7, reference="both", anchors_per_step=4)
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        causal_lm = model if args.full else model.get_base_model()
        for layer in causal_lm.model.layers:
            fully_shard(layer)
        if args.tail_unit:  # Accelerate's FSDP2 wrap: [final norm, LM head] kept unsharded from forward to backward
            fully_shard([causal_lm.model.norm, causal_lm.lm_head], reshard_after_forward=False)
        fully_shard(model)
    objective = STRObjective(config, tokens, anchors, seed=0)
    examples = [encode_chat(tokenizer, p, r) for p, r in BENIGN[:8]]
    batch = collate(examples, tokenizer.pad_token_id)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    rows = torch.tensor_split(torch.arange(8), world)[rank]
    local = {key: value[rows] for key, value in batch.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    model.train()
    terms = []
    for step in range(3):
        # the step's label count over every process: str_loss scales each process's share by their number, and
        # the averaged gradients are the global batch's (each rank takes its own share of the anchors)
        result = str_loss(model, local, objective, step, num_items_in_batch=labelled)
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logs = torch.tensor([result.task, result.str_anchor, result.str_task])
        if args.fsdp:  # each rank's terms are its share of the global mean times the ranks: their average is that mean
            dist.all_reduce(logs)
            logs /= world
        terms.append(dict(zip(("task_loss", "str_anchor", "str_task"), logs.tolist(), strict=True)))
    head = (model.get_base_model() if not args.full else model).lm_head.weight
    sharded = type(head).__name__ == "DTensor"
    weights = {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(args.out / "weights.safetensors"))
        (args.out / "terms.json").write_text(json.dumps({"terms": terms, "lm_head_sharded": sharded}))
    if args.fsdp:
        dist.barrier()  # no rank tears gloo down while another still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
