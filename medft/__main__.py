from medft.cli import main

raise SystemExit(main())
