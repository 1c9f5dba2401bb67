"""Launchers: `horovodrun` for Horovod jobs, a supervisor for MXNet's parameter server.

Thin wrappers with environment-variable defaults; the workers learn their backend from the
environment they set (DEEPLAB_DIST_BACKEND).
"""
