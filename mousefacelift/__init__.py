"""mouse-facelift: FaceLift (multi-view diffusion + GS-LRM) adapted to multi-camera mouse recordings.

The library behind the numbered notebooks in ``notebooks/``; see README.md and DESIGN.md.
"""
import warnings

__version__ = "0.1.0"

# tqdm.auto (diffusers, the trainers) warns in every Jupyter kernel without ipywidgets, then draws
# text bars: what an executed notebook, a static report, should hold anyway (mfl run collapses them)
warnings.filterwarnings("ignore", message="IProgress not found", category=Warning)
