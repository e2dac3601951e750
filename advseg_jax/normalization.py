"""The input convention shared by datasets and models.

Images are NHWC on the 0-255 scale. A model expects its input in one channel order ('RGB' for
AdvSemiSeg's VOC models, 'BGR' for AdaptSegNet and the Caffe initialisations) with a
per-channel mean subtracted; means are always written in B, G, R order.
"""

CHANNEL_ORDERS = ("RGB", "BGR")
# The Caffe DeepLab mean (B, G, R, 0-255 scale) that both originals subtract
# (docs/FIDELITY.md §6.5, §7.3).
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
