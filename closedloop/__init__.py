"""The closed loop: the rules engine's violations of ``rebalance`` policies handed to the scheduler,
and a schedule of placements followed step by step (``--schedule``).

This package sits above both: ``gpupack.rules`` judges and knows nothing of the scheduler (it takes
an :class:`~gpupack.rules.loop.Acting` if one is given), ``gpupack.scheduler`` plans and moves and
reads the rules engine's compiled policies. Only here are the two wired together, for
``gpupack rules run --server ...``.
"""
