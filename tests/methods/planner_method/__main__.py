"""``python -m planner_method run CONFIG ...`` (``tests/methods`` on ``PYTHONPATH``): the dymoe CLI with the test method registered."""

import sys

import torch

from dymoe.cli.main import main
from planner_method import register

if __name__ == "__main__":
    torch.set_num_threads(1)
    register()
    sys.exit(main(sys.argv[1:]))
