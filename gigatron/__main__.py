from gigatron.commands import main

raise SystemExit(main())
