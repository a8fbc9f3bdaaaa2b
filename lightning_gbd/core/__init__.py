"""Core maths of lightning-gbd: GBD groups, patterns, density and FLOPs; regularizers; force
maths; low-rank factorizations and rank rules; the timing harness; ``.pt2`` writing.

Plain torch / numpy only: no Lightning, no TVM.  Both the training callbacks and the compile
side (``tvm_passes``) call these functions, so each formula has one home.
"""
