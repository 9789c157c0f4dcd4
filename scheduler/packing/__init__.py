"""Packing: models onto the fewest devices (bounds, heuristics, column generation, searches, CP-SAT).

It knows placement problems only, never policies: ``gpupack.scheduler.constraints`` turns policies into problems.
"""
