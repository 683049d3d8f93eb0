"""The web console: pages to inspect images, manage categories, follow jobs, promote models."""
