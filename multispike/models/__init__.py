"""Model zoo: time-major CNNs and the spike-driven transformer, built with any neuron (timm-style registry).

Entry points::

    from multispike.models import create_model, list_models, model_info
    ann = create_model("vgg16_qcfs", num_classes=10, neuron="qcfs")            # T = 1: the QCFS ANN
    snn = create_model("resnet19", num_classes=100, neuron="lmht", T=2, neuron_kwargs={"levels": 2})

Registered models (``list_models()``; details in ``model_info(name)``):

==================================  ==============================================================
``vgg16_qcfs``                       VGG-16, 5 pools, FC 512->4096->4096 (QCFS / LM-HT hybrid / QAC)
``vgg16_diet``                       VGG-16, 4 pools, FC 2048, no biases (DIET / M-LIF)
``vgg13``                            LM-HT's SNN VGG-13 (10 convs, GAP; ImageNet-200)
``resnet18`` / ``resnet34``          CIFAR stem, or ``stem="imagenet"``
``ms_resnet18`` / ``ms_resnet34``    membrane-shortcut ResNets (LM-HT)
``resnet19``                         64-channel stem, FC 512->256->n
``resnet20_cifar``                   ResNet-20 with 16/32/64 channels (QCFS / QAC)
``resnet20_diet``                    ResNet-20 with 64->512 channels, no GAP (DIET / M-LIF)
``vggsnn`` / ``vggsnn_woap``         TET's DVS VGGSNN with / without pooling
``spike_driven_transformer``         Transformer-L-D (default 2-512, CIFAR); ``_8_512`` for ImageNet
CPU-scale                            ``vgg_small``, ``resnet8_cifar``, ``vggsnn_small``,
                                     ``spike_driven_transformer_tiny``
==================================  ==============================================================

There is deliberately no bare ``resnet20`` or ``vgg16``: each name exists in two different networks.
"""
from .base import NeuronFactory, TimeMajorModel, TimeSharedDropout
from .registry import ModelInfo, create_model, is_model, list_models, model_entrypoint, model_info, register_model

__all__ = ["create_model", "list_models", "model_info", "register_model", "is_model", "model_entrypoint", "ModelInfo",
           "TimeMajorModel", "NeuronFactory", "TimeSharedDropout"]
