"""Publishing releases: the coordinator's TUF repository (`repository`), its keys (`keys`) and the
read-only HTTP server clients pull from (`server`)."""
