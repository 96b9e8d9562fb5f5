"""Route 2: the ``um`` / ``umap`` / ``um_<base>`` / ``umap_<base>`` postprocessors that
OpenOOD's ``Evaluator`` (and ``scripts/eval_ood.py``) run, and the base method that scores.
"""
