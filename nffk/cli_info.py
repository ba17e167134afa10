"""`nffk info`: what this installation can run."""
import platform

import torch

from nffk import __version__, _ext, backends


def add_arguments(parser):
    del parser  # no options


def run(args):
    del args
    print(f"nffk {__version__}  torch {torch.__version__}  python {platform.python_version()}")
    print(f"threads: {torch.get_num_threads()}  cuda: {torch.cuda.is_available()}")
    print(f"compiled extension: {'loaded' if _ext.loaded() else 'missing: ' + str(_ext.ERROR)}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        for name in backends.BACKENDS[1:]:
            why = backends.unavailable_reason(name, device)
            print(f"  {device.type:5s} {name:10s} {'available' if why is None else 'unavailable: ' + why}")
    return 0
