"""``um-openood eval``'s library side: plan and score checkpoints with OpenOOD's Evaluator,
resolve and hash each postprocessor's config, and a score cache that is never stale.
"""
