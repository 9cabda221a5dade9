"""The HTML pages of runs: views, the run form, URLs and the server-drawn SVG charts."""
