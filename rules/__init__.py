"""The rules engine: observe recorded peaks -> judge them against YAML policies."""
