from gpupack.cli import main

raise SystemExit(main())
