"""The input convention shared by datasets and models.

Images are NHWC on the 0-255 scale. A model expects its input in one channel order ('RGB' for
AdvSemiSeg's VOC models, 'BGR' for AdaptSegNet and the Caffe initialisations) with a
per-channel mean subtracted; means are always written in B, G, R order.
"""

CHANNEL_ORDERS = ("RGB", "BGR")
# The Caffe DeepLab mean (B, G, R, 0-255 scale) that both originals subtract
# (docs/FIDELITY.md §6.5, §7.3).
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
# torchvision's ImageNet normalisation (ToTensor + Normalize: RGB mean 0.485, 0.456, 0.406 and
# std 0.229, 0.224, 0.225 on the 0-1 scale), as B, G, R on the 0-255 scale; the ICLR-2018
# reproduction's input (docs/FIDELITY.md §8).
IMAGENET_MEAN_BGR = (0.406 * 255, 0.456 * 255, 0.485 * 255)
IMAGENET_STD_BGR = (0.225 * 255, 0.224 * 255, 0.229 * 255)
# name -> (mean_bgr, std_bgr) of a model's input normalisation.
NORMALIZATIONS = {"caffe": (CAFFE_MEAN_BGR, None),
                  "imagenet": (IMAGENET_MEAN_BGR, IMAGENET_STD_BGR)}
