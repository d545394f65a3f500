"""Local stand-ins for the outside world (a Zuplo-like issuer, cloud emulators) and ``sts demo``.

Nothing under ``sts.dev`` is imported by the service path; tests and the demo use it.
"""
