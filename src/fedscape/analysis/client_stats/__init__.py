"""Client-update statistics per round: drift, gradient diversity (Yin et al. 2018), update cosine and the
L2 distance of the server weights to their final values (Nguyen et al. 2022, "Where to begin?")."""
