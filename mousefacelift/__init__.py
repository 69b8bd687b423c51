"""mouse-facelift: FaceLift (multi-view diffusion + GS-LRM) adapted to multi-camera mouse recordings.

The library behind the numbered notebooks in ``notebooks/``; see README.md and DESIGN.md.
"""
__version__ = "0.1.0"
