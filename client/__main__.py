"""`python -m client ...` is the same as `crunch ...`."""

from client.cli import main

raise SystemExit(main())
