from gigatron.cli import main

raise SystemExit(main())
