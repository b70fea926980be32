"""The operation library.

``signatures`` is the table of operation names and their declared parameters; it imports no torch, so the
``.scn`` checker reads it too. ``library`` (torch) holds one factory per signature.
"""
