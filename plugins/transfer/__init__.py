"""Transfer-method plugins: how source policies become target policies."""
