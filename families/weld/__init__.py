"""Weld defect classification, the shared part: classes, sample preprocessing, k-NN, the gallery file."""
