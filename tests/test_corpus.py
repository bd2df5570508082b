"""The synthetic corpus: held-out splits measure generalisation, not recall."""

import re

from logitguard.lab.toy.corpus import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, build_corpus


def words(text):
    return set(re.findall(r"[A-Za-z']+", text))


def test_corpus_is_deterministic_under_a_seed():
    assert build_corpus(3) == build_corpus(3)
    assert build_corpus(3).instruct != build_corpus(4).instruct


def test_heldout_prompts_never_appear_in_training(corpus):
    trained = {e.prompt for e in corpus.base + corpus.aligned + corpus.instruct}
    for split in (corpus.heldout_harmful, corpus.heldout_benign):
        assert not {e.prompt for e in split} & trained
    # The task's held-out phrasing is pretraining knowledge (verbose answers), never fine-tuning data.
    tuned = {e.prompt for e in corpus.aligned + corpus.instruct}
    assert not {e.prompt for e in corpus.heldout_task} & tuned


def test_heldout_requests_use_heldout_templates_and_unseen_acts(corpus):
    def act_of(prompt, templates):
        for t in templates:
            head, tail = t.split("{act}")
            if prompt.startswith(head) and prompt.endswith(tail):
                return prompt[len(head) : len(prompt) - len(tail)]
        return None

    def acts(rows):
        return {act_of(e.prompt, TRAIN_TEMPLATES + HELDOUT_TEMPLATES) for e in rows}

    pretrained, tuned = acts(corpus.base), acts(corpus.aligned + corpus.instruct)
    for e in corpus.heldout_harmful + corpus.heldout_benign:
        act = act_of(e.prompt, HELDOUT_TEMPLATES)
        assert act is not None and act_of(e.prompt, TRAIN_TEMPLATES) is None
        assert act not in tuned, act
        if e.category != "homonym":  # homonyms have words of their own, which pretraining must see
            assert act not in pretrained, act
    aligned_prompts = {e.prompt for e in corpus.aligned}
    assert all(act_of(p, TRAIN_TEMPLATES) for p in aligned_prompts if act_of(p, TRAIN_TEMPLATES + HELDOUT_TEMPLATES))


def test_every_heldout_word_is_trained_into_the_embeddings(corpus):
    trained = set().union(*(words(e.prompt) | words(e.response) for e in corpus.base))
    for e in corpus.heldout_harmful + corpus.heldout_benign + corpus.heldout_skills + corpus.heldout_task:
        assert words(e.prompt) <= trained, words(e.prompt) - trained
    for e in corpus.instruct:
        assert words(e.prompt) | words(e.response) <= trained


def test_benign_and_harmful_requests_share_templates(corpus):
    def template_of(prompt):
        return next(t for t in TRAIN_TEMPLATES if re.fullmatch(re.escape(t).replace(r"\{act\}", ".+"), prompt))

    harmful = {template_of(e.prompt) for e in corpus.aligned if e.kind == "harmful"}
    benign = {template_of(e.prompt) for e in corpus.aligned if e.kind == "benign"}
    assert harmful == benign == set(TRAIN_TEMPLATES)


def test_alignment_refuses_harmful_and_answers_benign(corpus):
    from logitguard.evaluation.verdicts import is_refusal

    for e in corpus.aligned:
        assert is_refusal(e.response) == (e.kind == "harmful"), e
    assert not any(is_refusal(e.response) for e in corpus.base + corpus.instruct)


def test_anchor_prompts_come_from_the_training_phrasings_asked_for(small_toy):
    from logitguard.lab.toy.corpus import HELDOUT_TEMPLATES, TRAIN_TEMPLATES
    from logitguard.lab.toy.setting import ToySetting
    from tests.helpers import SMALL_RECIPE

    setting = ToySetting(SMALL_RECIPE)
    first = TRAIN_TEMPLATES[0].split("{act}")[0]
    one = setting.anchor_prompts(500, seed=0, phrasings=1)
    assert one and all(p.startswith(first) for p in one)
    every = setting.anchor_prompts(64, seed=0)
    assert len(every) == 64 and setting.anchor_prompts(64, seed=0) == every
    held_out = [t.split("{act}")[0] for t in HELDOUT_TEMPLATES]
    assert not any(p.startswith(tuple(held_out)) for p in setting.anchor_prompts(2000, seed=0))
