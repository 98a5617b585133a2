"""pruneopt: pruning-space search for deployable (re-ID) CNNs.

FLOPs in this package are multiply-accumulates (MACs) of convolutions and linear layers, the convention of
pruning papers and of torchvision's model tables ("resnet50: 4.09 GFLOPs").
"""

__version__ = "0.1.0"
