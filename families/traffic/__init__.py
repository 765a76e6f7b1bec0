"""Traffic forecasting, the shared part: features, scaler, time grid and the manifest contract (training,
export and the service agree on them)."""
