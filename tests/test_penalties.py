"""The pure STR penalties, against reference implementations and known values (no model)."""

import math

import pytest
import torch

from logitguard.core.penalties import (
    MASKED_LOGIT,
    get_penalty,
    logit_mse,
    salient_kl,
    salient_log_probs,
    salient_logits,
    with_target_column,
)


def reference_mse(z, ref, mask):
    rows = [((z[i] - ref[i]) ** 2).mean() for i in range(len(z)) if mask[i]]
    return torch.stack(rows).mean() if rows else torch.tensor(0.0)


def reference_kl(z, ref, mask, t):
    rows = []
    for i in range(len(z)):
        if mask[i]:
            q = torch.softmax(ref[i] / t, -1)
            p = torch.softmax(z[i] / t, -1)
            rows.append((q * (q.log() - p.log())).sum() * t * t)
    return torch.stack(rows).mean() if rows else torch.tensor(0.0)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 5, generator=g, dtype=torch.float64)
    ref = torch.randn(12, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    return z, ref, mask


def test_mse_matches_reference(logits):
    z, ref, mask = logits
    assert torch.allclose(logit_mse(z, ref, mask).double(), reference_mse(z, ref, mask), atol=1e-6)


def test_mse_known_value():
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    ref = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    mask = torch.tensor([True, False])
    assert logit_mse(z, ref, mask).item() == pytest.approx(2.5)  # (1 + 4) / 2
    assert logit_mse(z, ref, mask, reduction="sum").item() == pytest.approx(2.5)
    assert logit_mse(z, ref, torch.tensor([True, True]), reduction="sum").item() == pytest.approx(27.5)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_kl_matches_reference(logits, t):
    z, ref, mask = logits
    assert torch.allclose(salient_kl(z, ref, mask, temperature=t).double(), reference_kl(z, ref, mask, t), atol=1e-5)


@pytest.mark.parametrize("penalty", [logit_mse, salient_kl])
def test_identical_logits_give_zero(penalty, logits):
    z, _, mask = logits
    assert penalty(z, z.clone(), mask).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_ignores_a_common_shift_mse_does_not(logits):
    z, _, mask = logits
    assert salient_kl(z + 3.0, z, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert logit_mse(z + 3.0, z, mask).item() == pytest.approx(9.0)


@pytest.mark.parametrize("penalty", [logit_mse, salient_kl])
def test_masked_positions_are_ignored(penalty, logits):
    z, ref, mask = logits
    garbage = z.clone()
    garbage[~mask] = 1e4
    assert torch.allclose(penalty(garbage, ref, mask), penalty(z, ref, mask))


@pytest.mark.parametrize("penalty", [logit_mse, salient_kl])
def test_empty_mask_gives_zero_and_zero_grad(penalty):
    z = torch.randn(3, 4, 6, requires_grad=True)
    loss = penalty(z, torch.randn(3, 4, 6), torch.zeros(3, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    assert torch.count_nonzero(z.grad) == 0


@pytest.mark.parametrize("penalty", [logit_mse, salient_kl])
def test_bf16_inputs_accumulate_in_fp32(penalty):
    g = torch.Generator().manual_seed(1)
    z, ref = torch.randn(64, 32, 8, generator=g), torch.randn(64, 32, 8, generator=g)
    mask = torch.ones(64, 32, dtype=torch.bool)
    low = penalty(z.bfloat16(), ref.bfloat16(), mask)
    assert low.dtype == torch.float32
    exact = penalty(z.bfloat16().float(), ref.bfloat16().float(), mask)
    assert low.item() == pytest.approx(exact.item(), rel=1e-5)


def test_gradient_flows_only_to_model_logits(logits):
    z, ref, mask = logits
    z = z.float().requires_grad_()
    ref = ref.float().requires_grad_()
    logit_mse(z, ref, mask).backward()
    assert ref.grad is None
    expected = 2 * (z.detach() - ref.detach()) / z.shape[-1] / mask.sum()
    assert torch.allclose(z.grad[mask], expected[mask], atol=1e-6)
    assert torch.count_nonzero(z.grad[~mask]) == 0


def test_salient_logits_equal_slices_of_full_logits():
    g = torch.Generator().manual_seed(2)
    hidden, weight, bias = torch.randn(2, 7, 16, generator=g), torch.randn(50, 16, generator=g), torch.randn(50)
    ids = torch.tensor([3, 17, 42, 0])
    full = hidden @ weight.T + bias
    assert torch.allclose(salient_logits(hidden, weight[ids], bias[ids]), full[..., ids], atol=1e-5)
    assert torch.allclose(salient_logits(hidden, weight[ids]), (hidden @ weight.T)[..., ids], atol=1e-5)


def test_unknown_penalty_and_reduction_are_clear_errors(logits):
    z, ref, mask = logits
    with pytest.raises(ValueError, match="unknown penalty 'l1'.*kl.*mse"):
        get_penalty("l1")
    with pytest.raises(ValueError, match="reduction"):
        logit_mse(z, ref, mask, reduction="max")
    with pytest.raises(ValueError, match="temperature"):
        salient_kl(z, ref, mask, temperature=0)


def test_salient_log_probs_are_full_softmax_slices_plus_the_rest():
    g = torch.Generator().manual_seed(3)
    full = torch.randn(4, 6, 40, generator=g) * 3
    ids = torch.tensor([1, 5, 9])
    out = salient_log_probs(full[..., ids], full.logsumexp(-1))
    probs = full.softmax(-1)
    assert torch.allclose(out[..., :3], probs[..., ids].log(), atol=1e-5)
    assert torch.allclose(out[..., 3], (1 - probs[..., ids].sum(-1)).log(), atol=1e-5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(4, 6), atol=1e-5)


def test_salient_log_probs_stay_finite_when_the_tokens_take_all_the_mass():
    logits = torch.tensor([[50.0, 0.0]])
    out = salient_log_probs(logits, logits.logsumexp(-1))
    assert torch.isfinite(out).all()


def test_the_target_column_gives_the_refusals_own_next_token_a_bucket_of_its_own():
    # k=2 safety tokens; the refusal's next token (".") is no safety token at the first position, and is one at the
    # second. A model that moves the mass of "." to a compliance token ("Step") changes nothing among the safety
    # tokens and nothing in the rest bucket's total: only the target column sees it.
    vocab = {"I": 0, "cannot": 1, ".": 2, "Step": 3, "x": 4}
    ids = torch.tensor([vocab["I"], vocab["cannot"]])
    reference = torch.tensor([[0.0, 0.0, 6.0, 0.0, 0.0]])
    moved = torch.tensor([[0.0, 0.0, 0.0, 6.0, 0.0]])
    mask = torch.ones(1, dtype=torch.bool)

    def buckets(full, target_bucket):
        logits = full[:, ids]
        if target_bucket:
            logits = with_target_column(logits, full[:, vocab["."]], torch.tensor([False]))
        return salient_log_probs(logits, full.logsumexp(-1))

    assert salient_kl(buckets(moved, False), buckets(reference, False), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert salient_kl(buckets(moved, True), buckets(reference, True), mask).item() > 1.0


def test_a_masked_target_column_has_no_mass_and_no_gradient():
    logits = torch.randn(3, 4, requires_grad=True)
    target = torch.randn(3, requires_grad=True)
    salient = torch.tensor([True, False, True])
    columns = with_target_column(logits, target, salient)
    log_p = salient_log_probs(columns, torch.full((3,), 10.0))  # the full vocabulary's log-normaliser
    assert torch.all(log_p[salient, 4] == MASKED_LOGIT) and log_p[~salient, 4].item() > MASKED_LOGIT
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(3), atol=1e-5)  # masked: 0 mass, nothing counted twice
    salient_kl(log_p, log_p.detach() + 0.1, torch.ones(3, dtype=torch.bool)).backward()
    assert torch.isfinite(target.grad).all() and torch.all(target.grad[salient] == 0)
