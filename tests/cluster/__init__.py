"""Tests on a real single-node Kubernetes: the chart installed, real pods injected (`node.py`
starts the node inside a network namespace of its own, `conftest.py` installs the chart)."""
