"""The SAS paper's reported claims (Ferreira et al., arXiv 2503.05916), quoted once for every table and figure."""

PAPER = {"average_gain": 0.16, "ci": (0.132, 0.188), "max_gain": 0.35,
         "clicks": "two clicks reach box-prompt quality", "large": "large organs do not lose"}
