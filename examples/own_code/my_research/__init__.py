"""An example of a researcher's own code for rethink-dist: a network builder and a data set loader.

Not installed anywhere: a sweep ships this folder to every Ray worker with its RUNTIME_ENV
(sweeps/own_code.py), and names the code as ``my_research.nets:make_net`` and
``my_research.data:gratings``.
"""
