"""Mixed precision: MXNet's automatic mixed precision (AMP) is process-wide state, turned on
once before any network is built; training and the benchmark ask it here which type it runs."""
__all__ = ["enable_amp", "amp_dtype"]

_AMP = {"dtype": None}


def enable_amp(ctx):
    """Turns on MXNet's automatic mixed precision for this process, before any network is
    built: float16 with dynamic loss scaling on a GPU, bfloat16 (MKL-DNN) on the CPU. Returns
    the low-precision type. Idempotent."""
    if _AMP["dtype"]:
        return _AMP["dtype"]
    from mxnet.contrib import amp
    from mxnet.contrib.amp.lists import symbol_bf16, symbol_fp16

    from deeplab.dist import fastbn

    dtype = "float16" if ctx.device_type == "gpu" else "bfloat16"
    lists = symbol_fp16 if dtype == "float16" else symbol_bf16
    # mx.library.load regenerates MXNet's operator functions, dropping the casting wrappers that
    # amp.init puts on them: a later load (synchronized BN's fused CPU kernels, loaded by its
    # first layer) silently turned AMP off. Load them first, and have AMP give them float32,
    # their one type.
    if ctx.device_type == "cpu" and fastbn.load():
        lists.FP32_FUNCS.extend(op for op in fastbn.OPS if op not in lists.FP32_FUNCS)
    if dtype == "bfloat16":
        # MXNet 1.9's bfloat16 lists call Concat type-neutral, so ASPP's concat of bfloat16
        # convolution outputs with its float32 image-pooling branch fails; float16's lists cast
        # Concat's inputs to the widest type, which is what this network needs.
        for name in ("Concat", "concat"):
            if name in symbol_bf16.BF16_FP32_FUNCS:
                symbol_bf16.BF16_FP32_FUNCS.remove(name)
                symbol_bf16.WIDEST_TYPE_CASTS.append(name)
    amp.init(target_dtype=dtype)
    _AMP["dtype"] = dtype
    return dtype


def amp_dtype():
    """The low-precision type AMP runs in this process ('float16', 'bfloat16'), or None."""
    return _AMP["dtype"]
