"""mlops-operator: train, register, validate, serve, monitor and roll out models on Kubernetes."""

GROUP = "mlops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

__version__ = "0.1.0"
