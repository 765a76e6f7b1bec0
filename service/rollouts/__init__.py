"""Safe rollouts (docs/rollouts.md): a candidate version in shadow or canary beside the served one, compared
per version on requests, errors, latency and live model quality, promoted or ended without downtime."""
