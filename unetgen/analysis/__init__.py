"""What a config implies, computed without building the network: `shapes` (exact shape
arithmetic: valid input sizes, skip crops, the trace), `costs` (parameters and MACs) and
`memory` (training memory, analytically); `arguments` holds the checks of their numeric options."""
