"""Kubernetes jobs for training runs: manifests rendered from a training config (`render`),
validated offline against pinned schemas (`validate`), and exercised without a cluster as local
processes (`local`). The command line is `deeplab k8s` (`cli`)."""
