"""The paper's evidence: deepened models (the constructed solution), layer responses (Fig. 7) and
the experiments that compare plain and residual networks (Fig. 1, Fig. 6, Table 6)."""
