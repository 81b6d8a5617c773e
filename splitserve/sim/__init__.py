"""Capacity planning: profile a node, simulate a fleet, plan the prefill/decode split.

profile.py (+ fit.py, measure.py, measure_transfer.py): what one node costs, measured and
fitted. node.py: one engine's token-budget scheduler in simulated time. cluster.py: the router,
the pools, reservations, transfers and load shedding as events. planner.py: the cheapest
configuration meeting SLOs.
"""
