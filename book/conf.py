"""Sphinx configuration of the course site (built by book/build.py, see docs/site.md).

The site is rendered from notebooks that build.py has already executed with papermill and the quick profile,
so myst-nb never executes anything here (nb_execution_mode = "off")."""

project = "SAS kit: Segment Anything Small for Ultrasound"
author = "sas-kit contributors"
copyright = "sas-kit contributors, Apache-2.0"

extensions = ["myst_nb"]
nb_execution_mode = "off"          # build.py executed the chapters already (papermill, quick profile)
nb_ipywidgets_js = {}              # no CDN scripts: the widgets are live only in Jupyter (see the chapter text)
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type"]  # ipywidgets views without saved state: text fallback
exclude_patterns = ["_build", "**.ipynb_checkpoints", "results.md"]  # results.md: included by index.md
master_doc = "index"
smartquotes = False  # the landing page copies summary.md text verbatim (a test compares it)

html_theme = "sphinx_book_theme"
html_title = "SAS kit — course"
html_show_sourcelink = False
html_copy_source = False
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,     # the executed .ipynb of each chapter can be downloaded
    "use_fullscreen_button": False,
}
html_last_updated_fmt = None
