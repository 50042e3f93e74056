"""Development tooling: the whole fleet on one machine.

An embedded S3+SQS (a moto server on localhost) with the resources the infrastructure
would create, and the runner behind ``make run``. It is not part of the installed
packages: it runs from a source checkout, with the ``local`` extra (moto) installed.
"""
