"""A data-only encoding of plain values, for what crosses the network or is read from files.

`pickle` (and Horovod's `broadcast_object`, which uses cloudpickle) runs code chosen by whoever
wrote the bytes; this encoding can only produce data: None, bool, int, float, str, bytes, lists,
tuples, dicts (keys of those scalar types) and the `deeplab.errors.UserError` family (class name
and message). Layout: MAGIC, the header's length (8 bytes, big-endian), the header (JSON, bytes
values replaced by references) and the bytes values one after the other (not inflated by JSON).
"""
import json
import struct

__all__ = ["MAGIC", "encode", "decode"]

MAGIC = b"DLWIRE1\n"
_LEN = struct.Struct(">Q")
_SCALARS = (type(None), bool, int, float, str)


def _tree(obj, blobs):
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, (bytes, bytearray, memoryview)):
        blobs.append(bytes(obj))
        return {"t": "bytes", "len": len(blobs[-1])}
    if isinstance(obj, (list, tuple)):
        return {"t": type(obj).__name__ if type(obj) in (list, tuple) else "list",
                "v": [_tree(v, blobs) for v in obj]}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, _SCALARS):
                raise TypeError("cannot encode a dict key of type %s" % type(k).__name__)
        return {"t": "dict", "v": [[k, _tree(v, blobs)] for k, v in obj.items()]}
    from deeplab.errors import UserError

    if isinstance(obj, UserError):
        return {"t": "error", "class": type(obj).__name__, "message": str(obj)}
    item = getattr(obj, "item", None)  # a numpy scalar
    if callable(item) and getattr(obj, "shape", None) == ():
        return _tree(item(), blobs)
    raise TypeError("cannot encode a value of type %s (plain data only)" % type(obj).__name__)


def encode(obj):
    """`obj` as bytes; raises TypeError for anything that is not plain data."""
    blobs = []
    header = json.dumps(_tree(obj, blobs), separators=(",", ":")).encode("utf-8")
    return b"".join([MAGIC, _LEN.pack(len(header)), header] + blobs)


def _error(name, message):
    from deeplab import errors

    cls = getattr(errors, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.UserError)):
        cls = errors.UserError
    return cls(str(message))


def decode(data):
    """The value `encode` made `data` from; raises ValueError for anything else."""
    data = bytes(data)
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LEN.size:
        raise ValueError("not data of deeplab.dist.wire (no %r header)" % MAGIC)
    start = len(MAGIC) + _LEN.size
    (n,) = _LEN.unpack(data[len(MAGIC):start])
    try:
        tree = json.loads(data[start:start + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError("damaged deeplab.dist.wire header: %s" % err) from None
    offset = [start + n]

    def build(node):
        if isinstance(node, _SCALARS):
            return node
        if not isinstance(node, dict):
            raise ValueError("damaged deeplab.dist.wire data: unexpected %r" % (node,))
        t = node.get("t")
        if t == "bytes":
            size = node.get("len")
            if not isinstance(size, int) or size < 0 or offset[0] + size > len(data):
                raise ValueError("damaged deeplab.dist.wire data: bytes beyond its end")
            offset[0] += size
            return data[offset[0] - size:offset[0]]
        if t in ("list", "tuple"):
            items = [build(v) for v in node.get("v", [])]
            return items if t == "list" else tuple(items)
        if t == "dict":
            pairs = node.get("v", [])
            if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], _SCALARS)
                       for p in pairs):
                raise ValueError("damaged deeplab.dist.wire data: a dict entry is not a pair")
            return {k: build(v) for k, v in pairs}
        if t == "error":
            return _error(node.get("class"), node.get("message", ""))
        raise ValueError("damaged deeplab.dist.wire data: unknown tag %r" % (t,))

    return build(tree)
