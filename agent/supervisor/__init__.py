"""Process and container supervision: states, restart policy, runtimes."""
