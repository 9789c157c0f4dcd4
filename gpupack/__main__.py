from gpupack.app.cli import main

raise SystemExit(main())
