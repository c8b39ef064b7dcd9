"""Remote application entities (devices): who may do what over DIMSE, and where they listen."""
