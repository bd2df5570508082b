"""LogitGuard: keep an aligned LLM safe while it is fine-tuned (Safety Token Regularization)."""
