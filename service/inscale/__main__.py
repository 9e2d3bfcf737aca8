from inscale.cli import main

raise SystemExit(main())
