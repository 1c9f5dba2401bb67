"""Launchers: `horovodrun` for Horovod jobs, a supervisor for MXNet's parameter server.

Both supervise the job they start: they name the worker that failed first, stop the job after a
failure or a SIGTERM in an order that lets the workers save a checkpoint, and leave no process
behind (`procs`). The workers learn their backend from the environment the launchers set
(DEEPLAB_DIST_BACKEND); defaults come from environment variables (DEEPLAB_LAUNCH_GRACE).
"""
