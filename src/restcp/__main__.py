from restcp.cli import main

raise SystemExit(main())
