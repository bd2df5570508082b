"""STR where people already fine-tune: Axolotl (:mod:`.axolotl`), LLaMA-Factory (:mod:`.llamafactory`), and
Unsloth (TRL's ``SFTTrainer``, so :class:`~logitguard.hosts.sft_trainer.STRSFTTrainer` as it is).

Each module imports its framework; import the one you use.
"""
