"""What both CLIs stand on: AWS clients and error classes, logging, metrics, CLI helpers.

Imports neither torch nor the worker or producer packages.
"""
