"""Context parallelism: one sequence split over the ranks of a CP group, attention kept exact.

layout.py   which tokens each rank holds (contiguous or zigzag) and their positions
comm.py     differentiable all-to-all and the ring exchange
ring.py     ring attention (K/V blocks passed around, log-sum-exp merge, rotating dK/dV)
ulysses.py  DeepSpeed-Ulysses (all-to-all from sequence to head sharding and back)
core.py     what the layer factory hands to attention and Mamba layers: local, ring, Ulysses, hybrid
"""
