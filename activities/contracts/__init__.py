"""What workflows and the API know of the activities: their names, inputs, results and call options.

Light on purpose: these modules import only temporalio, the domain and core, so a workflow (inside
Temporal's sandbox) or the API can import them without pulling in the store, providers or templates.
"""
