"""Traffic forecasting family: `POST /traffic/forecast` on a model exported from training/traffic."""
