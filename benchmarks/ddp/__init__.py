"""The core without OpenOOD under ``torchrun``: a two-process check (see ``__main__.py``)."""
