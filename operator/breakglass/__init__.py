"""breakglass-operator: scoped, approved, audited emergency access for Kubernetes."""

__version__ = "0.1.0"
