"""What both routes share: OpenOOD's loose config values turned into the core's settings
(``options``), the log of what differs from the authors' setting (``presets``), ξ and the fit
check (``fit_check``), the loaders UM trains on (``loaders``), one run per network (``reuse``).
"""
