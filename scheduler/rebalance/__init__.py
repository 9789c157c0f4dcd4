"""Rebalancing: today's placement read from Triton, a safe move plan to the target, carried out live."""
