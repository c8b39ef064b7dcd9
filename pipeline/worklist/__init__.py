"""The front of the workflow: registration, Modality Worklist, MPPS (issue 6)."""
