"""What runs the plan: the one step runner, walks in this process or N workers, the `stage` command,
tracking, and the Kubeflow pipeline."""
