"""The ``agssp`` command line: run the suite, its services and workers, manage jobs and keys."""
