"""Water family: gap filling of multimodal hydrology fields (POST /water/reconstruct)."""
