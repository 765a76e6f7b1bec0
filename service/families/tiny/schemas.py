"""The tiny family has no task routes, so no request or response models: /v2 describes its tensors."""
