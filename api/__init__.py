"""Lightbox's HTTP layer: a FastAPI application (health, DICOMweb per DICOM PS3.18).

:func:`api.main.create_app` builds the application; each resource has one
router under :mod:`api.routes`.
"""
