"""How fedscape's tables and figures are made: reading and gathering CSV tables, statistics over seeds,
and the one plotting style of every figure (pandas, matplotlib; no torch)."""
