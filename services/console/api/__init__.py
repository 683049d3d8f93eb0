"""HTTP layer of the console: pages, static assets and the same-origin proxy to the APIs."""
