"""Route 1: OpenOOD's ``main.py`` pipelines with the ``um`` / ``umap`` (and ``*_oe``) trainers,
their recorder (``best.ckpt`` = the final model), rank sync, and the checks ``um-openood run``
makes on a ``main.py`` config before the script starts.
"""
