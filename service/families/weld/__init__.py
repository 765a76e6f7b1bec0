"""Weld defect family: four-modality embedding + k-NN classification (POST /weld/classify, /weld/gallery)."""
