"""Your own network and data set, and a torchvision network, under the paper's randomization tests.

The code is a package that is not installed: examples/own_code/my_research/ (nets.py: a builder
``make_net((C, H, W), num_classes, **kwargs)``; data.py: a loader returning four numpy arrays).
``RUNTIME_ENV`` below is Ray's runtime environment of every trial: ``py_modules`` ships the
package to every worker of the cluster (paths are relative to this file); this process imports
it from there too, to check the trials before any starts. Models are named ``module:callable``,
``torchvision:<builder>`` or ``timm:<name>``; a data set ``module:callable`` (docs/own-code.md).

Grid: {make_net, torchvision's ResNet-18 (CIFAR stem on these 16-pixel images, logged as
meta.model_adapted)} x {true labels, half the labels random, random labels}, each until its
training set is fitted (at most 60 epochs), with per-sample memorization records.

Run:      rethink-dist sweep sweeps/own_code.py                       (a local Ray)
          ray job submit --address http://127.0.0.1:8265 --working-dir . -- python sweeps/own_code.py
                                                        (a cluster: --working-dir carries this file)
Smoke:    python sweeps/own_code.py --smoke                           (4 trials, 2 epochs, 256 images)
Expected: make_net fits the true labels in a few epochs and the random ones far more slowly; one
          ResNet-18 epoch over the 2,000 images takes tens of seconds on 2 CPU cores.
"""

NAME = "own_code"
RUNTIME_ENV = {"py_modules": ["../examples/own_code/my_research"]}
MODELS = ("my_research.nets:make_net", "torchvision:resnet18")
DATA = "my_research.data:gratings"


def trials(data_root=None):
    return [
        {"data": {"name": DATA}, "model": {"name": model}, "corruption": corruption,
         "optim": {"epochs": 60}, "stop": {"stop_when_fitted": True}, "sample_records": True}
        for model in MODELS
        for corruption in ({"kind": "none"}, {"kind": "labels", "level": 0.5}, {"kind": "labels", "level": 1.0})
    ]


if __name__ == "__main__":
    from rethink_dist.commands.sweep import main

    raise SystemExit(main(__file__))
