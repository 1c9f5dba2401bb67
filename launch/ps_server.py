"""A parameter-server node (ps-lite server or scheduler) that never unpickles what it receives.

`import mxnet` in a process with DMLC_ROLE=server or scheduler runs MXNet's own KVStoreServer,
whose controller unpickles the body of every command 0 (`kvstore.set_optimizer`) it receives:
ps-lite has no authentication, so whoever reaches a server could run code there. Our workers
never send one (their optimizer runs on the workers, update_on_kvstore=False), so this node
runs the same server with a controller that refuses such a command and keeps serving. It lives
outside deeplab.dist, whose import imports mxnet (and so would start MXNet's server first).

    python -m deeplab.launch.ps_server      (DMLC_ROLE=server|scheduler and the DMLC_PS_* variables)
"""
import os
import sys

__all__ = ["main"]


def _import_mxnet_without_its_server():
    """mxnet, imported with DMLC_ROLE=worker so that its import does not start MXNet's own server
    (which reads the role when the module is imported)."""
    role = os.environ.get("DMLC_ROLE")
    os.environ["DMLC_ROLE"] = "worker"
    try:
        import mxnet
    finally:
        if role is None:
            del os.environ["DMLC_ROLE"]
        else:
            os.environ["DMLC_ROLE"] = role
    return mxnet


def main():
    role = os.environ.get("DMLC_ROLE")
    if role not in ("server", "scheduler"):
        sys.exit("deeplab.launch.ps_server: DMLC_ROLE must be server or scheduler, got %r" % role)
    mx = _import_mxnet_without_its_server()
    from mxnet.kvstore.kvstore_server import KVStoreServer

    class Server(KVStoreServer):
        def _controller(self):
            def server_controller(cmd_id, cmd_body, _):
                print("deeplab ps server: refused command %d from the network (%d bytes): this "
                      "server runs no optimizer and unpickles nothing"
                      % (cmd_id, len(cmd_body or b"")), file=sys.stderr, flush=True)
            return server_controller

    Server(mx.kv.create("dist")).run()


if __name__ == "__main__":
    main()
