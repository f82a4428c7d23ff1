"""Networks shared by the rewards and the policies (which may not import each other)."""
