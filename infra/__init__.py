"""Process plumbing for running Crunch without Docker: embedded Redis and the supervisor."""
