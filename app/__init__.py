"""The top of the house: the ``gpupack`` command, its subcommands' wiring and the demo."""
