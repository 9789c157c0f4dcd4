"""The scheduler: place models on devices under every policy, plan safe moves, act through Triton."""
