"""`inscale profile`: find the config that serves the most under a p99 objective."""
