"""Demand planning: a configuration and a copy count per model for its traffic, on the fewest devices."""
