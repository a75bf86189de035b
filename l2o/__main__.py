from l2o.cli import main

raise SystemExit(main())
