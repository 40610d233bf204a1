"""Blind side-by-side human evaluation (`python -m jaxlm.humaneval`): a rating round's store,
item assignment, web app, and the statistics of its ratings. A command at the top of jaxlm's
layers: it uses jaxlm.eval to generate, and nothing in jaxlm imports it."""
