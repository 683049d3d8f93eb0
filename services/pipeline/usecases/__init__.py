"""Use cases of the pipeline service: plan, advance, drive and report pipelines; files."""
