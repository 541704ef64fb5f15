"""Node capacity: priority lanes, reserved shares per tenant, load shedding (docs/capacity.md).

settings.py   ``capacity:`` in the config (typed, validated)
lanes.py      which lane a request goes to (pure)
scheduler.py  admit / queue / shed, reserved-share arithmetic, who is next (pure)
gate.py       the asyncio around the scheduler: waiting, deadlines, hang-ups, leases
"""
