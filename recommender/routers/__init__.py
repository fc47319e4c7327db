"""HTTP routes, one module per audience: public (recommend, health), admin (control plane
writes, behind the token), operator (read-only state for people and dashboards), ui (the page)."""
