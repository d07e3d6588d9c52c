"""`python -m featsep ...`, the form torchrun runs: `torchrun --nproc_per_node N -m featsep train CONFIG`."""

from featsep.cli import main

main()
