"""DeepLabV3 networks: ResNet backbones with atrous convolution, ASPP and Vortex Pooling heads.

Knows nothing of distribution: the normalisation layer (plain or synchronized BN) is injected
through `norm_layer` / `norm_kwargs`.
"""
from .backbone import (BACKBONES, CLASSIFIER_KEYS, Backbone, get_backbone, make_atrous,
                       walk_blocks)
from .deeplab import MODELS, DeepLabV3, get_model
from .heads import HEADS, ASPPHead, DecodeHead, VortexHead
from .params import ParamsError, load_params
