"""Sample selection: drop the fine-tuning samples that would move the aligned model most, or that it would refuse.

After Bach, Nguyen, Le & Tran (arXiv 2604.17215), whose details are not public; the choices here:

* A sample's loss is its mean NLL over assistant tokens (as in SFT), and its gradient is taken with respect to
  the parameters that will be trained (the fresh LoRA adapters, or every Linear layer when fine-tuning fully),
  under the aligned model (adapters just initialised, so the model *is* the aligned one). LoRA's B starts at 0,
  so only B has a gradient, and that gradient is the dense weight gradient projected by the random A: a random
  projection that keeps norms up to a constant, so its norm ranks samples as the full gradient would.
* Per-sample gradients come from one forward and one backward of the summed per-sample losses: hooks on each
  trainable Linear layer see its input ``x`` (B, T, in) and output gradient ``g`` (B, T, out), and the per-sample
  weight gradient is ``g_bᵀ x_b``. Its squared norm and its dot product with a fixed direction are computed
  without materialising it when that is cheaper (``linear_sample_stats``). This is exact, costs about one
  training step per batch, and needs no ``vmap`` over the model (whose mask building is data-dependent).
* Five scores (:class:`SelectionConfig`): ``gradient-norm`` = ‖∇θ loss_i‖; ``safety`` = −⟨∇θ loss_i, ĝ⟩ with ĝ the
  unit gradient of the NLL of the aligned model's refusals (the anchors): to first order, how much one SGD step on
  the sample raises the refusal loss; ``first-tokens``, the gradient norm of the first response tokens' NLL;
  ``refusal``, how surely the aligned model would start a refusal where the sample's answer starts, as its mass on
  the safety tokens there (a forward pass); ``refusal-opening``, the probability of the aligned model's own refusal
  openings ("I'm sorry") after the prompt, which asks for the refusal itself where safety tokens include ordinary
  openings (Qwen2.5-Coder's "To", "If"). The highest ``fraction`` of scores, or every score at least
  ``threshold``, is dropped.
"""

from logitguard.selection.gradients import anchor_refusal_batch, refusal_batch, safety_direction
from logitguard.selection.run import parameters_fingerprint, run_selection
from logitguard.selection.scores import SCORES, SelectionConfig, keep_mask, score_samples
from logitguard.selection.select import select_samples

__all__ = [
    "SCORES",
    "SelectionConfig",
    "anchor_refusal_batch",
    "keep_mask",
    "parameters_fingerprint",
    "refusal_batch",
    "run_selection",
    "safety_direction",
    "score_samples",
    "select_samples",
]
