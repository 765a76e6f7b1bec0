"""Live model-quality signals shared by the families (docs/quality.md): input drift against the training
statistics a manifest ships, and a bounded recent-window ratio."""
