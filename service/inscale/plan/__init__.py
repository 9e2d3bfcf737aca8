"""`inscale plan`: replicas, pod resources and autoscaler targets from a profile's results."""
