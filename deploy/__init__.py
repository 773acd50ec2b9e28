"""Deploy tier: bundle builds, root-config packages, staged canary rollout and rollback,
Kubernetes manifests. Importing it has no side effects."""
