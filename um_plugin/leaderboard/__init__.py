"""Leaderboard rows, their provenance, and the CI gate: plain Python, no torch, no OpenOOD.

``um-openood gate`` compares two CSVs, so it must run where OpenOOD is not installed (a CI
step after the scoring job). :mod:`.table` writes and reads the rows, :mod:`.provenance`
hashes what a row was made from, :mod:`.gate` compares rows.
"""
