"""Training and export of avatarcam's neural engine (Zakharov et al. 2019). Needs torch
(``pip install "avatarcam[train]"``); the live app never imports this package."""
