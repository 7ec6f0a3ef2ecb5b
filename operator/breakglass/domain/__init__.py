"""Pure decision code: no kopf, no Kubernetes client, time always injected."""
