"""Traffic forecasting, the shared part: features, scaler, time grid (training and service agree on it)."""
