"""Unfold and fold (``aten.im2col``, ``aten.col2im``): sliding windows moved into and out of channels."""
