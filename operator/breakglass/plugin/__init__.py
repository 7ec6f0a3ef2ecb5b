"""kubectl-breakglass: the kubectl plugin."""
