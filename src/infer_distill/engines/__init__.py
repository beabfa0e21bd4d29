"""What runs the plan: the one step runner, walks in this process or N workers, the `stage` command,
tracking, the Kubeflow pipeline, and the plan rendered for Argo and docker compose."""
