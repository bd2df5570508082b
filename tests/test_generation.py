"""Batched greedy generation: answers come back in the prompts' order, as if generated one at a time."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from logitguard.evaluation.generation import generate


def test_batched_answers_are_each_prompts_own_answer_in_the_given_order(small_toy, corpus):
    tokenizer = AutoTokenizer.from_pretrained(small_toy.aligned)
    model = AutoModelForCausalLM.from_pretrained(small_toy.aligned)
    # refusals and answers, of different lengths
    examples = corpus.heldout_harmful[:3] + corpus.heldout_benign[:2] + corpus.heldout_task[:2]
    prompts = sorted((e.prompt for e in examples), key=len, reverse=True)  # longest first: batching reorders them
    one_by_one = [generate(model, tokenizer, [p], max_new_tokens=8, desc=None)[0] for p in prompts]
    assert len(set(one_by_one)) > 2, "the prompts should get different answers"
    assert generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3, desc=None) == one_by_one
