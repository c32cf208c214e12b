"""The notification activities, by concern: detection (``detection.py``: rules on a batch's changes, the
notifications they produce; who watches what in ``watchers.py``, what the users hold in ``holdings.py``),
delivery (``delivery.py``: one notification on one channel) and digests (``digests.py``), with what they
share in ``common.py``. Their contracts, which workflows call, are in
``activities.contracts.notify``; the worker builds each class once (``nftpulse.worker``).
"""
