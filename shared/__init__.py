"""The suite's shared package: configuration, errors, storage, jobs, image intake, HTTP parts."""
