"""The bench room: `digitnet bench train|predict|serve`, each returning a JSON-able dict of figures
measured beside a baseline or a peer on the same machine (`common`: timing, environment, ports)."""
